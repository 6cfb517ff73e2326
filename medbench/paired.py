"""Per-sample paired comparison of two runs: ``medbench compare --paired A B``.

``A`` and ``B`` are run directories (or their ``results.json``) of the same task, scored over the
same sample ids. For every metric both runs have per-sample values for, the result gives the
mean of A, the mean of B, the difference B − A and its paired percentile-bootstrap CI: sample ids
are resampled with replacement and the same resample is applied to both runs
(:func:`medbench.metrics.bootstrap.bootstrap_paired_diff`, seeded). Binary accuracy metrics
(``closed_accuracy``, ``accuracy``, ``open_accuracy``) also get McNemar's exact test.

- **Corpus metrics.** BLEU-1…4, METEOR and CIDEr (and any metric whose headline in results.json
  is not the mean of its per-sample values) have a corpus-level headline. Their means,
  difference and CI here are of the *per-sample* scores, flagged ``corpus_headline`` with both
  headlines beside them; the corpus statistic itself is not recomputed.
- **Samples.** A run's sample ids are the ids with any per-sample value. Different id sets are
  refused unless ``intersect`` is set; then the common ids are used and the left-out counts are
  reported. Within that set a metric is paired over the ids both runs scored for it (a note
  counts any others, e.g. a sample without an attention map in one run).
- **Refusals** (:class:`PairedCompareError`, exit code 2): different tasks, task versions or
  metric protocols; a run without per-sample values; different id sets without ``intersect``.
  A metric only one run has is skipped and listed in ``skipped``.

Values are kept in stored units (fractions; CIDEr native); the markdown/csv tables print them as
the paper tables do (×100 for VQA and report metrics).

Example::

    >>> cmp = paired_compare("runs/x/phantom-vqa/none+greedy", "runs/x/phantom-vqa/lora+greedy")
    >>> print(render_paired(cmp, "markdown"))

This module never imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import ConfigError
from medbench.metrics import preview_ids

__all__ = [
    "BINARY_METRICS",
    "CORPUS_METRICS",
    "McNemar",
    "PairedCompareError",
    "PairedComparison",
    "PairedMetric",
    "PairedRun",
    "SkippedMetric",
    "load_run",
    "mcnemar_exact",
    "paired_compare",
    "render_paired",
]

CORPUS_METRICS = frozenset({"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider"})
BINARY_METRICS = frozenset({"closed_accuracy", "accuracy", "open_accuracy"})
_HEADLINE_TOL = 1e-9


class PairedCompareError(ConfigError):
    """Two runs that cannot be compared sample by sample (printed as one line, exit code 2)."""


@dataclass(frozen=True)
class PairedRun:
    """One run: its directory, results.json and per-sample values ``{metric: {id: value}}``."""

    path: Path
    results: dict[str, Any]
    per_sample: dict[str, dict[str, float]]

    @property
    def sample_ids(self) -> set[str]:
        """Every id with at least one per-sample value."""
        return {i for values in self.per_sample.values() for i in values}

    def headline(self, metric: str) -> float | None:
        """The metric's value in results.json (``None`` when absent or not a number)."""
        value = (self.results.get("metrics") or {}).get(metric)
        if isinstance(value, dict):
            value = value.get("value")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: ``b`` = A correct and B wrong, ``c`` = A wrong and B correct."""

    b: int
    c: int
    p: float


@dataclass(frozen=True)
class PairedMetric:
    """One metric over ``n`` paired samples; ``diff`` = ``mean_b`` − ``mean_a``."""

    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci: tuple[float, float]
    corpus_headline: bool = False
    headline_a: float | None = None
    headline_b: float | None = None
    mcnemar: McNemar | None = None
    note: str = ""


@dataclass(frozen=True)
class SkippedMetric:
    """A metric left out of the comparison, with the reason."""

    metric: str
    reason: str


@dataclass(frozen=True)
class PairedComparison:
    """The paired comparison of run ``a`` with run ``b`` (see the module docstring)."""

    a: str
    b: str
    task: str
    task_version: str | None
    n_samples: int
    only_in_a: int
    only_in_b: int
    intersect: bool
    seed: int
    n_resamples: int
    level: float
    metrics: list[PairedMetric] = field(default_factory=list)
    skipped: list[SkippedMetric] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form: ``metrics`` keyed by name, values in stored units."""
        out = asdict(self)
        out["metrics"] = {}
        for m in self.metrics:
            entry = asdict(m)
            del entry["metric"]
            entry["ci"] = list(m.ci)
            entry["basis"] = "per_sample_mean_of_corpus_metric" if m.corpus_headline else "mean"
            out["metrics"][m.metric] = entry
        out["units"] = "stored (fractions in [0, 1]; CIDEr native)"
        return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: ``min(1, 2 · Σ_{k ≤ min(b, c)} C(b + c, k) / 2^(b + c))``."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _run_dir(spec: str | Path, label: str) -> Path:
    path = Path(spec)
    if path.is_file() and path.name == "results.json":
        return path.parent
    if path.is_dir() and (path / "results.json").is_file():
        return path
    if not path.exists():
        raise PairedCompareError(f"{label} {path}: no such run directory or results.json")
    found = sorted(path.rglob("results.json")) if path.is_dir() else []
    if len(found) == 1:
        return found[0].parent
    if not found:
        raise PairedCompareError(f"{label} {path}: no results.json (--paired compares two run directories)")
    shown = ", ".join(str(p.parent) for p in found[:3])
    raise PairedCompareError(
        f"{label} {path} holds {len(found)} runs ({shown}{' ...' if len(found) > 3 else ''}); "
        "--paired compares two single run directories"
    )


def _read_json(path: Path, label: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PairedCompareError(f"{label} {path}: unreadable ({exc})") from None


def load_run(spec: str | Path, label: str = "run") -> PairedRun:
    """Read a run directory (or its results.json) with its per-sample values."""
    run_dir = _run_dir(spec, label)
    results = _read_json(run_dir / "results.json", label)
    if not isinstance(results, dict):
        raise PairedCompareError(f"{label} {run_dir / 'results.json'}: not a results object")
    ps_path = run_dir / "per_sample.json"
    rescore = f"re-score it with `medbench score {run_dir}`"
    if not ps_path.is_file():
        raise PairedCompareError(f"{label} {run_dir} has no per-sample values (no per_sample.json); {rescore}")
    raw = _read_json(ps_path, label)
    if not isinstance(raw, dict):
        raise PairedCompareError(f"{label} {ps_path}: expected a mapping of metric to {{id: value}}")
    per_sample: dict[str, dict[str, float]] = {}
    for metric, values in raw.items():
        if not isinstance(values, dict):
            raise PairedCompareError(f"{label} {ps_path}: {metric}: expected a mapping of id to value")
        bad = [str(i) for i, v in values.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise PairedCompareError(f"{label} {ps_path}: {metric}: non-numeric or non-finite values "
                                     f"for {preview_ids(bad)}")
        if values:
            per_sample[str(metric)] = {str(i): float(v) for i, v in values.items()}
    if not per_sample:
        raise PairedCompareError(f"{label} {run_dir} has no per-sample values (per_sample.json is empty); {rescore}")
    return PairedRun(run_dir, results, per_sample)


def _check_same_task(ra: PairedRun, rb: PairedRun) -> None:
    for key, what in (("task", "tasks"), ("task_version", "task versions"), ("metric_protocol", "metric protocols")):
        va, vb = ra.results.get(key), rb.results.get(key)
        if va != vb:
            raise PairedCompareError(f"the runs' {what} differ (A {va!r}, B {vb!r}); a paired comparison needs "
                                     "two runs of the same task over the same samples")


def _is_corpus(metric: str, run: PairedRun) -> bool:
    """True when the headline is not the mean of the run's per-sample values."""
    if metric.split("@", 1)[0] in CORPUS_METRICS:
        return True
    headline = run.headline(metric)
    values = run.per_sample[metric]
    if headline is None:
        return False
    mean = math.fsum(values.values()) / len(values)
    return abs(headline - mean) > _HEADLINE_TOL * max(1.0, abs(mean))


def _mcnemar(a: list[float], b: list[float]) -> McNemar:
    n_b = sum(1 for x, y in zip(a, b) if x == 1.0 and y == 0.0)
    n_c = sum(1 for x, y in zip(a, b) if x == 0.0 and y == 1.0)
    return McNemar(n_b, n_c, mcnemar_exact(n_b, n_c))


def _pair_metric(metric: str, ra: PairedRun, rb: PairedRun, ids: set[str], *, seed: int,
                 n_resamples: int, level: float) -> PairedMetric | SkippedMetric:
    from medbench.metrics.bootstrap import bootstrap_paired_diff

    va, vb = ra.per_sample[metric], rb.per_sample[metric]
    ids_a, ids_b = set(va) & ids, set(vb) & ids
    common = sorted(ids_a & ids_b)
    if not common:
        return SkippedMetric(metric, "no sample has a value for it in both runs")
    notes = []
    if ids_a != ids_b:
        notes.append(f"paired over the {len(common)} samples both runs scored "
                     f"({len(ids_a - ids_b)} only in A, {len(ids_b - ids_a)} only in B left out)")
    xa = [va[i] for i in common]
    xb = [vb[i] for i in common]
    diff, ci = bootstrap_paired_diff(dict(zip(common, xb)), dict(zip(common, xa)),
                                     n_resamples=n_resamples, seed=seed, level=level)
    assert diff is not None and ci is not None
    corpus = _is_corpus(metric, ra) or _is_corpus(metric, rb)
    if corpus:
        notes.append("corpus-level headline: means, Δ and CI are of the per-sample scores")
    test = None
    if metric.split("@", 1)[0] in BINARY_METRICS:
        if all(x in (0.0, 1.0) for x in xa + xb):
            test = _mcnemar(xa, xb)
        else:
            notes.append("per-sample values are not 0/1: no McNemar test")
    return PairedMetric(
        metric=metric,
        n=len(common),
        mean_a=math.fsum(xa) / len(xa),
        mean_b=math.fsum(xb) / len(xb),
        diff=diff,
        ci=(ci["low"], ci["high"]),
        corpus_headline=corpus,
        headline_a=ra.headline(metric) if corpus else None,
        headline_b=rb.headline(metric) if corpus else None,
        mcnemar=test,
        note="; ".join(notes),
    )


def paired_compare(a: str | Path, b: str | Path, *, intersect: bool = False, seed: int = 0,
                   n_resamples: int = 1000, level: float = 0.95) -> PairedComparison:
    """Compare run ``b`` with run ``a`` sample by sample (differences are B − A)."""
    if n_resamples < 1:
        raise PairedCompareError(f"--n-resamples must be at least 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise PairedCompareError(f"the CI level must be in (0, 1), got {level}")
    ra, rb = load_run(a, "A"), load_run(b, "B")
    _check_same_task(ra, rb)
    ids_a, ids_b = ra.sample_ids, rb.sample_ids
    only_a, only_b = ids_a - ids_b, ids_b - ids_a
    common = ids_a & ids_b
    if (only_a or only_b) and not intersect:
        parts = [f"{len(only_a)} only in A" + (f" (e.g. {preview_ids(only_a, 3)})" if only_a else ""),
                 f"{len(only_b)} only in B" + (f" (e.g. {preview_ids(only_b, 3)})" if only_b else ""),
                 f"{len(common)} in both"]
        hint = (f"; pass --intersect to compare the {len(common)} common ids" if common
                else "; they share no sample id")
        raise PairedCompareError("the runs score different sample ids: " + ", ".join(parts) + hint)
    if not common:
        raise PairedCompareError("the runs share no sample id")
    rows: list[PairedMetric] = []
    skipped: list[SkippedMetric] = []
    names = list(dict.fromkeys([*ra.per_sample, *rb.per_sample]))
    for metric in names:
        in_a, in_b = metric in ra.per_sample, metric in rb.per_sample
        if in_a and in_b:
            out = _pair_metric(metric, ra, rb, common, seed=seed, n_resamples=n_resamples, level=level)
            (rows if isinstance(out, PairedMetric) else skipped).append(out)
        else:
            skipped.append(SkippedMetric(metric, "per-sample values only in " + ("A" if in_a else "B")))
    for metric in dict.fromkeys([*(ra.results.get("metrics") or {}), *(rb.results.get("metrics") or {})]):
        if metric in names:
            continue
        has = [side for side, run in (("A", ra), ("B", rb)) if run.headline(metric) is not None]
        if has:
            skipped.append(SkippedMetric(metric, f"no per-sample values; headline only in {' and '.join(has)}"))
    return PairedComparison(
        a=str(ra.path), b=str(rb.path), task=str(ra.results.get("task")),
        task_version=ra.results.get("task_version"), n_samples=len(common),
        only_in_a=len(only_a), only_in_b=len(only_b), intersect=intersect,
        seed=seed, n_resamples=n_resamples, level=level, metrics=rows, skipped=skipped,
    )


def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def render_paired(cmp: PairedComparison, fmt: str = "markdown") -> str:
    """The comparison as a markdown or csv table with notes, or as JSON (:meth:`PairedComparison.to_json`)."""
    if fmt == "json":
        return json.dumps(cmp.to_json(), indent=1, ensure_ascii=False)
    from medbench import tables as T
    from medbench.compare import metric_scale

    pct = f"{100 * cmp.level:g} %"
    body = []
    for m in cmp.metrics:
        mult, dec = metric_scale(m.metric)
        mark = T.SUBSTITUTED_MARK if m.corpus_headline else ""
        note = m.note
        if m.corpus_headline:
            heads = f"headlines A {T.fmt_number(_scaled(m.headline_a, mult), dec)}, " \
                    f"B {T.fmt_number(_scaled(m.headline_b, mult), dec)}"
            note = f"{note}; {heads}" if note else heads
        body.append([
            m.metric + mark,
            str(m.n),
            T.fmt_number(m.mean_a * mult, dec),
            T.fmt_number(m.mean_b * mult, dec),
            T.fmt_delta(m.diff * mult, dec),
            f"[{m.ci[0] * mult:+.{dec}f}, {m.ci[1] * mult:+.{dec}f}]",
            T.MISSING if m.mcnemar is None else f"{m.mcnemar.b} / {m.mcnemar.c} / {_fmt_p(m.mcnemar.p)}",
            note,
        ])
    headers = ["Metric", "n", "A", "B", "Δ (B − A)", f"{pct} CI of Δ", "McNemar b / c / p", "Note"]
    notes = [
        f"A = {cmp.a}; B = {cmp.b}.",
        f"Task {cmp.task} (version {cmp.task_version}), {cmp.n_samples} samples. Δ = B − A; {pct} paired "
        f"percentile bootstrap: {cmp.n_resamples} resamples of the sample ids, the same resample for both "
        f"runs, seed {cmp.seed}. VQA/report metrics ×100, coverage/intensity as fractions.",
    ]
    if any(m.mcnemar for m in cmp.metrics):
        notes.append("McNemar's exact test (two-sided): b = A correct and B wrong, c = A wrong and B correct.")
    if any(m.corpus_headline for m in cmp.metrics):
        notes.append(f"{T.SUBSTITUTED_MARK} corpus-level metric: its headline is not a mean of per-sample "
                     "scores; A, B, Δ and the CI here are of the mean of per-sample scores.")
    if cmp.intersect and (cmp.only_in_a or cmp.only_in_b):
        notes.append(f"--intersect: {cmp.n_samples} common sample ids used; {cmp.only_in_a} only in A and "
                     f"{cmp.only_in_b} only in B left out.")
    if cmp.skipped:
        notes.append("Skipped: " + "; ".join(f"{s.metric} ({s.reason})" for s in cmp.skipped) + ".")
    if not cmp.metrics:
        notes.append("No metric has per-sample values in both runs.")
    return T.format_table("Paired comparison: B − A per sample", headers, body, notes, fmt)


def _scaled(value: float | None, mult: float) -> float | None:
    return None if value is None else value * mult
