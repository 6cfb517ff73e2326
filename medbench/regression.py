"""CI regression of the embedded-tier numbers: the baseline suite, its tolerances and the check.

The **suite** is every decoding method on the base model and on LoRA, plus A³TUNE (greedy), on
``phantom-vqa`` (the first 48 test questions by id) and ``phantom-report`` (the first 16 test
reports), with CI-sized adapters (each tuning trained on the first 192 training samples for one
epoch). A method is paired only with the tasks its ``supports`` accepts: ControlMLLM steers toward
the region a question refers to, so it has no ``phantom-report`` entry.

``medbench baselines generate`` runs the suite and writes one ``results.json`` per entry under
``results/baselines/<task>/<tuning>+<decoding>/`` (the run's own results file, so ``medbench
compare`` reads it, plus a ``baseline`` block: the command, the suite, whether the method samples),
then runs the suite a second time with one CPU thread to measure float noise, and writes
``tolerances.json``. ``medbench baselines check`` reruns the suite and fails when any metric moves
beyond its tolerance.

Tolerances (in the units ``results.json`` stores, i.e. fractions):

* **deterministic** methods (no sampling): ``NOISE_FACTOR`` × the largest change any
  deterministic entry of the same task showed for that metric between the two thread counts,
  and never below ``FLOOR`` relative to the metric's size (``FLOOR`` × max(1, |baseline value|)):
  attention grids are stored to 6 significant digits, and a ratio such as ``attention_peak`` (≈ 6)
  moves by a few 1e-6 when another CPU's kernels change the last bits of the weights;
* **sampling** methods (``selection=sample`` or nucleus): the half-width of the baseline's
  95 % bootstrap CI of that metric — another RNG stream draws other tokens, and the test-set
  sampling spread bounds how far that can move a mean — and never below the deterministic
  tolerance. METEOR has no default CI, so generation computes its CI for sampling entries.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.atomic import atomic_write_json
from medbench.errors import ConfigError
from medbench.runner import RunConfig, run
from medbench.scoring import latest_rows

log = logging.getLogger("medbench")

DEFAULT_BASELINES = "results/baselines"
DEFAULT_WORKDIR = "results/regression"
NOISE_FACTOR = 3.0
FLOOR = 1e-6  # relative: 6 significant digits of the stored attention grids


def floor_for(value: float | None) -> float:
    """The smallest tolerance of a metric whose baseline value is ``value``: ``FLOOR`` relative to
    its size, and ``FLOOR`` itself for values in [-1, 1] (fractions)."""
    return FLOOR * max(1.0, abs(value or 0.0))
SAMPLING_DECODERS = frozenset({"nucleus"})
REGENERATE = "medbench baselines generate"


@dataclass(frozen=True)
class Entry:
    """One (task, tuning, decoding) cell of the suite."""

    task: str
    tuning: str
    decoding: str

    @property
    def key(self) -> str:
        return f"{self.task}/{self.tuning}+{self.decoding}"


@dataclass(frozen=True)
class Suite:
    """What the CI-sized benchmark runs; recorded in every baseline file."""

    limits: dict[str, int] = field(default_factory=lambda: {"phantom-vqa": 48, "phantom-report": 16})
    tuning_args: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "lora": {"train_limit": 192, "epochs": 1},
        "a3tune": {"train_limit": 192, "epochs": 1},
    })
    model: str = "tiny-med-llava"
    seed: int = 0
    batch_size: int = 8
    tunings: tuple[str, ...] = ("none", "lora", "a3tune")
    decodings: tuple[str, ...] | None = None  # None: every registered decoding method

    def entries(self) -> list[Entry]:
        """Every built-in decoding on ``none`` and ``lora``; A³TUNE with greedy (its paper setting).

        A tuning method pairs with its ``baseline_decodings`` (A³TUNE: greedy) or every decoding;
        a decoding method only with the tasks it ``supports`` (ControlMLLM: VQA only). Plugin
        methods are not part of medbench's baselines.
        """
        from medbench.registry import METHODS, TASKS

        decoders = self.decodings or tuple(
            n for n in METHODS.builtin_names() if METHODS.entry(n).info["kind"] == "decoding")
        out = []
        for task in self.limits:
            task_cls = TASKS.get(task)
            for tuning in self.tunings:
                paired = METHODS.get(tuning).baseline_decodings if tuning != "none" else None
                for d in paired or decoders:
                    if METHODS.get(d).supports(task_cls):
                        out.append(Entry(task, tuning, d))
        return out

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MARKER = ".medbench-regression"


def fresh_workdir(workdir: Path) -> Path:
    """Empty ``workdir`` for a new pass: cached predictions or adapters must not mask a code change.

    Only a directory medbench created (it holds the marker file) is ever deleted.
    """
    import shutil

    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise ConfigError(f"{workdir} is not empty and was not made by medbench baselines; "
                                  "choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("scratch space of `medbench baselines`; deleted on the next pass\n")
    return workdir


def select(entries: Iterable[Entry], patterns: list[str] | None) -> list[Entry]:
    """Entries whose key matches any glob in ``patterns`` (all when none given)."""
    entries = list(entries)
    if not patterns:
        return entries
    chosen = [e for e in entries if any(fnmatch.fnmatchcase(e.key, p) for p in patterns)]
    if not chosen:
        keys = ", ".join(e.key for e in entries[:6])
        raise ConfigError(f"no suite entry matches {' '.join(patterns)} (keys look like {keys}, …)")
    return chosen


def run_entry(entry: Entry, suite: Suite, workdir: Path, *, args: dict[str, Any] | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Run one entry through the normal runner (adapters cached under ``workdir/checkpoints``)."""
    method_args: dict[str, Any] = {}
    if entry.tuning != "none":
        method_args.update({f"tuning.{k}": v for k, v in suite.tuning_args[entry.tuning].items()})
    method_args.update({f"decoding.{k}": v for k, v in (args or {}).items()})
    cfg = RunConfig(
        method=entry.decoding, tuning=entry.tuning, task=entry.task, model=suite.model,
        method_args=method_args, limit=suite.limits[entry.task], batch_size=suite.batch_size,
        seed=suite.seed, output_dir=str(workdir / "runs"), checkpoint_dir=str(workdir / "checkpoints"),
        progress=progress,
    )
    return run(cfg)


def is_sampling(results: dict[str, Any]) -> bool:
    decoding = results["method_args"].get("decoding", {})
    return results["decoding"] in SAMPLING_DECODERS or decoding.get("selection") == "sample"


def command_line(entry: Entry, suite: Suite) -> str:
    parts = ["medbench", "run", "--method", entry.decoding, "--tuning", entry.tuning, "--task", entry.task,
             "--limit", str(suite.limits[entry.task]), "--seed", str(suite.seed)]
    if entry.tuning != "none":
        parts += ["--method-args", *(f"tuning.{k}={v}" for k, v in suite.tuning_args[entry.tuning].items())]
    return shlex.join(parts)


def baseline_path(root: Path, entry: Entry) -> Path:
    return root / entry.task / f"{entry.tuning}+{entry.decoding}" / "results.json"


def numeric_metrics(results: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in results.get("metrics", {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _meteor_ci(results: dict[str, Any]) -> dict[str, Any] | None:
    """METEOR's bootstrap CI (opt-in in scoring because it re-scores every resample)."""
    from medbench.metrics.report import ReportMetrics
    from medbench.predictions import read_rows

    _, raw = read_rows(Path(results["run_dir"]) / "predictions.jsonl")
    by_id = latest_rows(raw)
    rows = [by_id[i] for i in sorted(by_id)]
    return ReportMetrics(meteor_ci=True, seed=results.get("seed", 0)).compute(rows)["meteor"].ci


def generate(suite: Suite, out_dir: Path, workdir: Path, *, noise_threads: int = 1,
             progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run the suite, write the baseline files, measure thread-count noise, write tolerances.

    Baseline files of entries no longer in the suite are removed, so the directory is exactly
    the suite.
    """
    import shutil

    import torch

    entries = suite.entries()
    fresh_workdir(workdir)
    primary: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries, 1):
        progress(f"[{i}/{len(entries)}] {entry.key}")
        res = run_entry(entry, suite, workdir / "primary")
        if is_sampling(res) and res["metrics"].get("meteor") is not None and not res["confidence_intervals"].get("meteor"):
            res["confidence_intervals"]["meteor"] = _meteor_ci(res)
        primary[entry.key] = res
    threads = torch.get_num_threads()
    noise: dict[str, dict[str, float]] = {}
    if noise_threads and noise_threads != threads:
        torch.set_num_threads(noise_threads)
        try:
            for i, entry in enumerate(entries, 1):
                progress(f"[noise {i}/{len(entries)}] {entry.key} with {noise_threads} thread(s)")
                other = numeric_metrics(run_entry(entry, suite, workdir / f"threads-{noise_threads}"))
                base = numeric_metrics(primary[entry.key])
                noise[entry.key] = {m: abs(base[m] - other[m]) for m in base if m in other}
        finally:
            torch.set_num_threads(threads)
    for entry in entries:
        res = dict(primary[entry.key])
        res.pop("run_dir", None)
        res["baseline"] = {"key": entry.key, "command": command_line(entry, suite), "regenerate": REGENERATE,
                           "suite": suite.record(), "sampling": is_sampling(res), "threads": threads}
        atomic_write_json(baseline_path(out_dir, entry), res)
    keep = {baseline_path(out_dir, e).parent for e in entries}
    for stale in out_dir.glob("*/*/results.json"):
        if stale.parent not in keep:
            shutil.rmtree(stale.parent)
    tolerances = derive_tolerances({k: primary[k] for k in primary}, noise,
                                   {"primary_threads": threads, "noise_threads": noise_threads})
    atomic_write_json(out_dir / "tolerances.json", tolerances)
    return tolerances


def derive_tolerances(results: dict[str, dict[str, Any]], noise: dict[str, dict[str, float]],
                      measured_with: dict[str, Any]) -> dict[str, Any]:
    """Per-entry, per-metric tolerances with the rule and the measurement behind each."""
    pooled: dict[tuple[str, str], float] = {}
    for key, res in results.items():
        if is_sampling(res):
            continue
        for metric, diff in noise.get(key, {}).items():
            slot = (res["task"], metric)
            pooled[slot] = max(pooled.get(slot, 0.0), diff)
    entries: dict[str, dict[str, Any]] = {}
    for key, res in sorted(results.items()):
        sampling = is_sampling(res)
        rows = {}
        for metric, value in numeric_metrics(res).items():
            det = max(NOISE_FACTOR * pooled.get((res["task"], metric), 0.0), floor_for(value))
            row = {"tolerance": det, "rule": "deterministic", "thread_noise": noise.get(key, {}).get(metric)}
            if sampling:
                ci = (res.get("confidence_intervals") or {}).get(metric) or {}
                if "low" not in ci:
                    raise ValueError(f"{key}: sampling metric {metric} has no CI to derive a tolerance from")
                half = (ci["high"] - ci["low"]) / 2
                row.update(tolerance=max(half, det), rule="sampling: bootstrap CI half-width", ci_half_width=half)
            rows[metric] = row
        entries[key] = {"sampling": sampling, "metrics": rows}
    return {
        "rules": {
            "deterministic": f"max({NOISE_FACTOR:g} x largest |change| of the metric over the task's deterministic "
                             f"entries between thread counts, {FLOOR:g} x max(1, |baseline value|))",
            "sampling": "max(half-width of the baseline's 95% bootstrap CI, the deterministic tolerance)",
        },
        "measured_with": measured_with,
        "pooled_thread_noise": {f"{t}/{m}": v for (t, m), v in sorted(pooled.items())},
        "entries": entries,
    }


@dataclass
class Deviation:
    key: str
    metric: str
    baseline: float | None
    observed: float | None
    tolerance: float | None
    ok: bool
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.observed is None:
            return None
        return self.observed - self.baseline


def compare_to_baseline(key: str, observed: dict[str, Any], baseline: dict[str, Any],
                        tolerances: dict[str, Any]) -> list[Deviation]:
    """Every baseline metric of one entry against the observed run."""
    rules = tolerances["entries"].get(key)
    if rules is None:
        return [Deviation(key, "*", None, None, None, False, f"no tolerances for {key}; run {REGENERATE}")]
    got = numeric_metrics(observed)
    out = []
    for metric, value in numeric_metrics(baseline).items():
        tol = rules["metrics"].get(metric, {}).get("tolerance")
        now = got.get(metric)
        if tol is None:
            out.append(Deviation(key, metric, value, now, None, False, "no tolerance recorded"))
        elif now is None:
            out.append(Deviation(key, metric, value, None, tol, False, "metric missing from the new run"))
        else:
            out.append(Deviation(key, metric, value, now, tol, abs(now - value) <= tol))
    for count in ("planned", "scored", "failed"):
        a, b = baseline.get("counts", {}).get(count), observed.get("counts", {}).get(count)
        if a != b:
            out.append(Deviation(key, f"counts.{count}", a, b, 0.0, False, "sample counts differ"))
    return out


def check(suite: Suite, baselines: Path, workdir: Path, *, patterns: list[str] | None = None,
          perturb: dict[str, dict[str, Any]] | None = None,
          progress: Callable[[str], None] = log.info) -> list[Deviation]:
    """Rerun the (selected) suite and compare each entry with its baseline file."""
    tol_path = baselines / "tolerances.json"
    if not tol_path.exists():
        raise FileNotFoundError(f"{tol_path} not found; create the baselines with `{REGENERATE}`")
    tolerances = json.loads(tol_path.read_text())
    entries = select(suite.entries(), patterns)
    fresh_workdir(workdir)
    deviations: list[Deviation] = []
    for i, entry in enumerate(entries, 1):
        path = baseline_path(baselines, entry)
        if not path.exists():
            deviations.append(Deviation(entry.key, "*", None, None, None, False, f"no baseline file {path}"))
            continue
        progress(f"[{i}/{len(entries)}] {entry.key}")
        baseline = json.loads(path.read_text())
        observed = run_entry(entry, suite, workdir, args=(perturb or {}).get(entry.key))
        found = compare_to_baseline(entry.key, observed, baseline, tolerances)
        if any(not d.ok for d in found) and observed.get("fingerprint") != baseline.get("fingerprint"):
            for d in found:
                d.note = d.note or "run fingerprint differs from the baseline's (method args, data or model changed)"
        deviations += found
    return deviations


def render(deviations: list[Deviation], *, failures_only: bool = True) -> str:
    """A plain table of the deviations (by default only the failing ones)."""
    rows = [d for d in deviations if not (failures_only and d.ok)]
    if not rows:
        return ""
    lines = [f"{'entry':<34} {'metric':<16} {'baseline':>10} {'now':>10} {'delta':>10} {'tol':>10}  note"]
    fmt = lambda v: "-" if v is None else f"{v:.6g}"  # noqa: E731
    for d in rows:
        lines.append(f"{d.key:<34} {d.metric:<16} {fmt(d.baseline):>10} {fmt(d.observed):>10} "
                     f"{fmt(d.delta):>10} {fmt(d.tolerance):>10}  {'ok' if d.ok else 'FAIL'} {d.note}".rstrip())
    return "\n".join(lines)
