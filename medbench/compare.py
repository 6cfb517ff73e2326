"""Diff two result sets metric by metric: ``medbench compare A B``.

``A`` and ``B`` are each a results directory (every ``results.json`` below it), a single
``results.json`` file, or the literal ``"paper"`` (the paper's numbers in ``results/paper/``).

- **Pairing.** Two single results are compared directly, whatever their configuration. Otherwise
  results pair up by (backbone, task, tuning, decoding); where a side has several results for one
  key, the one without a ``limit`` wins, then the newest (as in :mod:`medbench.tables`). Against
  the paper, each run is matched to the paper row with the same (backbone, tuning, decoding); a
  greedy run of a composition the paper only reports with its unstated default decoding (the
  ``A3TUNE`` rows, Table 2) is matched to that row and says so in ``note``.
- **Scale.** Values are shown as the tables print them, from :mod:`medbench.metric_registry`:
  VQA and report metrics ×100 (2 decimals), attention fractions and ratios as stored (3 decimals),
  metrics the registry does not know as stored (4 decimals).
- **Flag.** ``flag`` is True when the difference lies outside the confidence intervals: each
  value lies outside the other side's CI (where only one side has a CI, the other value lies
  outside it — against the paper, which has no CI: the paper's value outside the run's CI).
  ``None`` when neither side has a CI or a value is missing.
- **Provenance.** For two paired runs, every differing field of results.json except the
  measurements themselves (metrics, CIs, timing, breakdowns) and the run directory — fingerprint, task version, metric
  protocol, method args, seed, versions, git, limit, counts — flattened to dotted names.

Example::

    >>> rows = compare("results/runs", "paper")
    >>> print(render_compare(rows, "markdown"))

This module never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench import metric_registry as MR
from medbench import tables as T

PAPER = "paper"
PROVENANCE_EXCLUDE = frozenset(
    {
        "baseline",
        "metrics",
        "confidence_intervals",
        "timing",
        "breakdowns",
        "per_sample",
        "metric_details",
        "stderr",
        "skipped",
        "run_dir",
        "_path",
    }
)
_PAPER_SKIP_TABLES = (3,)  # Table 3 repeats the LoRA blocks of Tables 8 and 9


def metric_scale(metric: str) -> tuple[float, int]:
    """(multiplier, decimals) for showing a stored metric the way the tables print it."""
    return MR.display_scale(metric)


@dataclass
class Record:
    """One result (a run's results.json, or one paper row for one task)."""

    backbone: str
    task: str
    tuning: str
    decoding: str | None
    raw: dict | None = None  # results.json; None for the paper
    paper_values: dict[str, float] = field(default_factory=dict)  # printed values, paper only
    source: str = ""

    @property
    def is_paper(self) -> bool:
        return self.raw is None

    @property
    def key(self) -> tuple:
        return (self.backbone, self.task, self.tuning, self.decoding)

    def value(self, metric: str, canonical: bool) -> float | None:
        if self.is_paper:
            return self.paper_values.get(metric)
        if canonical:
            v = T.metric_value(self.raw, metric)
        else:
            v = (self.raw.get("metrics") or {}).get(metric)
            v = v.get("value") if isinstance(v, dict) else v
            v = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        return None if v is None else v * metric_scale(metric)[0]

    def ci(self, metric: str, canonical: bool) -> tuple[float, float] | None:
        if self.is_paper:
            return None
        ci = T.metric_ci(self.raw, metric) if canonical else _exact_ci(self.raw, metric)
        mult = metric_scale(metric)[0]
        return None if ci is None else (ci[0] * mult, ci[1] * mult)


def _exact_ci(result: dict, metric: str) -> tuple[float, float] | None:
    cis = result.get("confidence_intervals")
    if isinstance(cis, dict) and metric in cis:
        return T.metric_ci({"confidence_intervals": {metric: cis[metric]}}, metric)
    return None


def _run_record(result: dict) -> Record:
    return Record(
        T.canonical_backbone(result.get("model")),
        str(result.get("task")),
        str(result.get("tuning") or "none").lower(),
        T.normalize_decoding(result.get("decoding")),
        raw=result,
        source=str(result.get("_path", "")),
    )


def paper_records(paper: dict[int, dict] | None = None) -> dict[tuple, Record]:
    """The paper's numbers as records keyed by (backbone, task, tuning, decoding)."""
    paper = T.load_paper_tables() if paper is None else paper
    out: dict[tuple, Record] = {}
    for number in sorted(paper):
        table = paper[number]
        if table.get("kind", "results") != "results" or number in _PAPER_SKIP_TABLES:
            continue
        for row in table["rows"]:
            for key, value in row["values"].items():
                task, _, metric = key.partition("/")
                k = (row["backbone"], task, row["tuning"], T.normalize_decoding(row.get("decoding")))
                rec = out.setdefault(k, Record(*k, source=f"paper Table {number}"))
                rec.paper_values.setdefault(metric, value)
    return out


def load_side(spec: Any) -> tuple[str, list[Record]]:
    """``("paper", records)`` or ``("runs", records)`` for a directory, a results.json or ``"paper"``."""
    if isinstance(spec, str) and spec == PAPER:
        return PAPER, list(paper_records().values())
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results directory or results.json (or use 'paper')")
    if path.is_dir() and not any(path.rglob("results.json")) and any(path.glob("table*.json")):
        return PAPER, list(paper_records(T.load_paper_tables(path)).values())
    results = T.collect_results(path)
    if not results:
        raise FileNotFoundError(f"{path}: no results.json found")
    return "runs", [_run_record(r) for r in results]


def _best(records: list[Record]) -> dict[tuple, Record]:
    best: dict[tuple, Record] = {}
    for rec in records:
        cur = best.get(rec.key)
        if cur is None or T.preference(rec.raw) > T.preference(cur.raw):
            best[rec.key] = rec
    return best


def _paper_candidates(run: Record, paper: dict[tuple, Record]) -> list[tuple[Record, str]]:
    """Paper records a run is compared with: its own row, then (greedy runs) the default-decoding row."""
    bb, task, tuning, dec = run.key
    out = []
    if run.key in paper:
        out.append((paper[run.key], ""))
    base = paper.get((bb, task, tuning, None))
    if dec == "greedy" and base is not None:
        out.append((base, "paper row uses the paper's unstated default decoding"))
    return out


def _flag(a: float | None, b: float | None, a_ci: tuple | None, b_ci: tuple | None) -> bool | None:
    if a is None or b is None:
        return None
    eps = 1e-9
    outside = []
    if a_ci is not None:
        outside.append(not (a_ci[0] - eps <= b <= a_ci[1] + eps))
    if b_ci is not None:
        outside.append(not (b_ci[0] - eps <= a <= b_ci[1] + eps))
    return all(outside) if outside else None


def _row(ra: Record | None, rb: Record | None, metric: str, canonical: bool, note: str) -> dict | None:
    ref = ra or rb
    a = ra.value(metric, canonical) if ra is not None else None
    b = rb.value(metric, canonical) if rb is not None else None
    if a is None and b is None:
        return None
    dec = metric_scale(metric)[1]
    a_ci = ra.ci(metric, canonical) if ra is not None else None
    b_ci = rb.ci(metric, canonical) if rb is not None else None
    return {
        "kind": "metric",
        "model": ref.backbone,
        "task": ref.task,
        "tuning": ref.tuning,
        "decoding": ref.decoding if ref.decoding is not None else "default",
        "metric": metric,
        "a": None if a is None else round(a, 6),
        "b": None if b is None else round(b, 6),
        "delta": None if a is None or b is None else round(a - b, dec + 2),
        "a_ci": a_ci,
        "b_ci": b_ci,
        "flag": _flag(a, b, a_ci, b_ci),
        "decimals": dec,
        "a_limit": (ra.raw or {}).get("limit") if ra is not None else None,
        "b_limit": (rb.raw or {}).get("limit") if rb is not None else None,
        "note": note or ("only in A" if rb is None else "only in B" if ra is None else ""),
    }


def _run_rows(ra: Record | None, rb: Record | None) -> list[dict]:
    names: list[str] = []
    for rec in (ra, rb):
        for k in (rec.raw.get("metrics") or {}) if rec is not None else ():
            if k not in names and rec.value(k, False) is not None:
                names.append(k)
    return [r for m in names if (r := _row(ra, rb, m, False, "")) is not None]


def _paper_rows(run: Record, candidates: list[tuple[Record, str]], paper_is_a: bool) -> list[dict]:
    """One row per metric the run has and the paper reports (own row first, then the fallback)."""
    rows, done = [], set()
    for rec, note in candidates:
        for m in rec.paper_values:
            if m in done or run.value(m, True) is None:
                continue
            done.add(m)
            row = _row(rec, run, m, True, note) if paper_is_a else _row(run, rec, m, True, note)
            # the row describes the run's configuration, not the paper row's
            row.update(
                model=run.backbone,
                task=run.task,
                tuning=run.tuning,
                decoding=run.decoding if run.decoding is not None else "default",
            )
            rows.append(row)
    return rows


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not prefix and k in PROVENANCE_EXCLUDE:
                continue
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or ({prefix[:-1]: {}} if prefix else {})
    return {prefix[:-1]: obj}


def provenance_diff(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """(field, value in A, value in B) for every differing non-measurement field of two results."""
    fa, fb = _flatten(a), _flatten(b)
    missing = object()
    out = []
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k, missing), fb.get(k, missing)
        if va != vb:
            out.append((k, None if va is missing else va, None if vb is missing else vb))
    return out


def compare(a: Any, b: Any) -> list[dict]:
    """Rows diffing result set ``a`` against ``b`` (see the module docstring).

    Each row is a dict with ``kind`` ``"metric"`` (model, task, tuning, decoding, metric, a, b,
    delta = a − b, a_ci, b_ci, flag, note) or ``"field"`` (model, task, tuning, decoding, field, a, b).
    """
    kind_a, recs_a = load_side(a)
    kind_b, recs_b = load_side(b)
    if kind_a == PAPER and kind_b == PAPER:
        raise ValueError("compare needs at least one side that is a run (both sides are the paper)")
    rows: list[dict] = []
    if PAPER in (kind_a, kind_b):
        runs, paper = (recs_a, recs_b) if kind_b == PAPER else (recs_b, recs_a)
        pindex = {r.key: r for r in paper}
        for run in sorted(_best(runs).values(), key=lambda r: _sort_key(r.key)):
            rows += _paper_rows(run, _paper_candidates(run, pindex), paper_is_a=kind_a == PAPER)
        return rows
    if len(recs_a) == 1 and len(recs_b) == 1:
        pairs = [(recs_a[0], recs_b[0])]
    else:
        best_a, best_b = _best(recs_a), _best(recs_b)
        keys = sorted(set(best_a) | set(best_b), key=_sort_key)
        pairs = [(best_a.get(k), best_b.get(k)) for k in keys]
    for ra, rb in pairs:
        rows += _run_rows(ra, rb)
        if ra is not None and rb is not None:
            ref = ra
            for name, va, vb in provenance_diff(ra.raw, rb.raw):
                rows.append(
                    {
                        "kind": "field",
                        "model": ref.backbone,
                        "task": ref.task,
                        "tuning": ref.tuning,
                        "decoding": ref.decoding if ref.decoding is not None else "default",
                        "field": name,
                        "a": va,
                        "b": vb,
                    }
                )
    return rows


def _sort_key(key: tuple) -> tuple:
    return tuple("" if k is None else str(k) for k in key)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt_ci(ci: tuple | None, dec: int) -> str:
    return T.MISSING if ci is None else f"[{ci[0]:.{dec}f}, {ci[1]:.{dec}f}]"


def _flag_text(flag: bool | None) -> str:
    return "outside CI" if flag else "" if flag is False else "no CI"


def render_compare(rows: list[dict], fmt: str = "markdown", a_label: str = "A", b_label: str = "B") -> str:
    """The rows of :func:`compare` as tables (markdown, latex, csv) or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=1, default=str, ensure_ascii=False)
    metric_rows = [r for r in rows if r["kind"] == "metric"]
    field_rows = [r for r in rows if r["kind"] == "field"]
    head = ["Model", "Task", "Tuning", "Decoding"]
    body = []
    limited = False
    for r in metric_rows:
        dec = r["decimals"]
        a = T.fmt_number(r["a"], dec) + (
            T.LIMITED_MARK if r["a"] is not None and r.get("a_limit") is not None else ""
        )
        b = T.fmt_number(r["b"], dec) + (
            T.LIMITED_MARK if r["b"] is not None and r.get("b_limit") is not None else ""
        )
        limited = limited or a.endswith(T.LIMITED_MARK) or b.endswith(T.LIMITED_MARK)
        flag = _flag_text(r["flag"]) if r["a"] is not None and r["b"] is not None else "missing"
        body.append(
            [
                r["model"],
                r["task"],
                r["tuning"],
                r["decoding"],
                r["metric"],
                a,
                b,
                T.fmt_delta(r["delta"], dec),
                _fmt_ci(r["a_ci"], dec),
                _fmt_ci(r["b_ci"], dec),
                flag,
                r.get("note", ""),
            ]
        )
    headers = [*head, "Metric", a_label, b_label, "Δ", f"{a_label} CI", f"{b_label} CI", "Flag", "Note"]
    n_flag = sum(1 for r in metric_rows if r["flag"])
    notes = [
        f"{n_flag} of {len(metric_rows)} metric(s) differ by more than the confidence intervals; "
        "Δ = A − B; VQA/report metrics ×100, coverage/intensity as fractions."
    ]
    if limited:
        notes.append(f"{T.LIMITED_MARK} limited run (--limit): a subset of the test set.")
    if not metric_rows:
        notes = ["No matching results to compare."]
    out = T.format_table(f"Metrics: {a_label} vs {b_label}", headers, body, notes, fmt)
    if field_rows:
        fbody = [
            [r["model"], r["task"], r["tuning"], r["decoding"], r["field"], _short(r["a"]), _short(r["b"])]
            for r in field_rows
        ]
        out += "\n\n" + T.format_table(
            "Fingerprint and provenance differences", [*head, "Field", a_label, b_label], fbody, [], fmt
        )
    return out
