"""Paper-style tables from medbench result files and from the paper's own numbers.

Two sources feed the same layouts:

- **Result files**: ``results.json`` written by ``medbench run`` (metrics stored as fractions in
  [0, 1]); :func:`collect_results` finds them under a results directory.
- **The paper**: ``results/paper/tableN.json``, the A3Tune paper's tables as data (numbers as
  printed, with the table's scale recorded); :func:`load_paper_tables` reads them.

Layouts (the ``table`` argument of :func:`render`):

- ``vqa`` (paper Table 1): rows are method compositions grouped in blocks (``Model`` column:
  ``LLaVA-Med``, ``LLaVA-Med + LoRA``; ``Method`` column: the block's base row, ``Greedy``,
  ``VCD`` …, ``A3TUNE``), columns are dataset × Open/Closed. Values ×100, 2 decimals.
- ``attention`` (paper Table 2): coverage and intensity per task, 3-decimal fractions, then
  medbench's raw-map columns where results have them: ``roi_mass`` (a fraction, 3 decimals),
  ``roi_lift`` and ``attention_peak`` (ratios, 1.0 = uniform, 3 decimals; never ×100).
- ``report`` (paper Table 3): printed transposed as in the paper — rows are dataset × metric,
  columns are method compositions. Values ×100, 2 decimals.

Row labels follow the paper: a result's ``tuning`` picks the block (``none`` → ``<Backbone>``,
otherwise ``<Backbone> + <block_label>`` of the tuning method: ``LoRA`` for ``lora`` and
``a3tune``) and its ``decoding`` the row (the method's ``label``: ``Greedy``, ``VCD`` …); a tuning
with a ``row_label`` (``a3tune``) names its own rows (``A3TUNE``, ``A3TUNE → VCD``). Labels and
row order come from the method registry, so a plugin method gets its own. The paper's base rows
(``LLaVA-Med``, ``LLaVA-Med + LoRA``, ``A3TUNE``) use the evaluation script's unstated default
decoding and are distinct from its ``Greedy`` rows: a result with decoding ``default`` (or none)
fills them, a medbench ``a3tune`` result decoded greedily fills the ``A3TUNE`` row, and a greedy result fills a base row where the paper table has a base
row but no ``Greedy`` row (Table 2); where the paper has that row, the label is marked ``†``.
Results of one composition whose method arguments differ on the same task get one row per
setting (``VCD [decoding.alpha=0.5]``). Missing cells are ``–``; cells from a run with a ``limit``
are marked ``*`` with a footnote; cells of runs with failed samples ``!``. When two results map
to one cell, the one without a limit wins, then the newest (``timing.finished_at``).
``compare_paper`` adds the paper's value and the delta (ours − paper) beside each of our cells.

Example::

    >>> from medbench.tables import render, collect_results
    >>> print(render("vqa", collect_results("results/runs"), "markdown", compare_paper=True))

This module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from medbench import metric_registry as MR
from medbench.paths import ASSETS
from medbench.registry import METHODS, TASKS, PluginError

MISSING = "–"
LIMITED_MARK = "*"
SUBSTITUTED_MARK = "†"
FAILED_MARK = "!"
FORMATS = ("markdown", "latex", "csv", "json")
TABLE_KINDS = ("vqa", "attention", "report")

# ---- names -------------------------------------------------------------------------------------
# fmt: off
BACKBONE_DISPLAY = {"llava-med-v1": "LLaVA-Med", "llava-med-v1.5": "LLaVA-Med-1.5", "huatuogpt-vision-7b": "HuatuoGPT-V"}
_BACKBONE_ALIASES = {
    "llava-med-v1": ("llava-med", "llava-med-v1", "llava-med-v1.0", "llava-med-1.0", "llava-med-7b", "llavamed"),
    "llava-med-v1.5": ("llava-med-v1.5", "llava-med-1.5", "llava-med-v1.5-mistral-7b", "llava-med-v1.5-mistral-7b-hf"),
    "huatuogpt-vision-7b": ("huatuogpt-vision-7b", "huatuogpt-vision", "huatuogpt-v", "huatuogpt-vision-7b-hf"),
}
# The paper's datasets and their column labels, in column order: the tasks that declare a label.
TASK_LABELS = {n: TASKS.entry(n).info["label"] for n in TASKS.in_order()
               if TASKS.entry(n).plugin is None and "label" in TASKS.entry(n).info}
# Metric labels, units, layouts and aliases are declared once, in medbench.metric_registry.
KIND_METRICS = {kind: MR.layout_metrics(kind) for kind in MR.LAYOUTS}  # the built-ins at import
KIND_TITLES = {
    "vqa": "Medical VQA (paper Table 1 layout): open recall / closed accuracy, ×100",
    "attention": "Visual attention distribution (paper Table 2 layout): coverage / intensity / RoI mass, "
    "fractions; RoI lift / peak, ratios",
    "report": "Report generation (paper Table 3 layout): ×100",
}
_KIND_PAPER_TABLES = {"vqa": (1, 4), "attention": (2,), "report": (8, 9, 11, 12, 5)}
_PAPER_REPORT = ("bleu4", "rouge_l", "meteor", "bertscore", "chexbert", "radgraph", "ratescore")
_KIND_DEFAULT_COLUMNS = {  # shown when there is nothing to render
    "vqa": [(t, m) for t in ("slake", "vqa-rad", "pathvqa") for m in KIND_METRICS["vqa"]]
    + [("iu-xray-vqa", "closed_accuracy"), ("omnimedvqa", "closed_accuracy")],
    "attention": [("slake", "coverage"), ("slake", "intensity")],
    "report": [(t, m) for t in ("iu-xray-report", "mimic-cxr-report") for m in _PAPER_REPORT],
}
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"–": "--", "Δ": r"$\Delta$", "†": r"$^\dagger$", "³": r"$^3$", "λ": r"$\lambda$",
                  "↑": r"$\uparrow$", "→": r"$\rightarrow$", "×": r"$\times$", "−": "-"}
# fmt: on
_ALIAS_TO_BACKBONE = {a: c for c, aliases in _BACKBONE_ALIASES.items() for a in aliases}
_BACKBONE_ORDER = list(BACKBONE_DISPLAY)
TASK_ORDER = tuple(TASK_LABELS)


def method_info(name: str) -> dict[str, Any]:
    """A method's registry metadata (label, kind, a tuning's block/row labels); ``{}`` if unknown."""
    if name not in METHODS:
        return {}
    try:
        return METHODS.entry(name).info
    except PluginError:
        return {}


def method_order(kind: str) -> list[str]:
    """Registered methods of ``kind`` in registration order (decoding: the paper's row order)."""
    return [n for n in METHODS.in_order() if method_info(n).get("kind") == kind]


def tuning_block_label(tuning: str) -> str:
    """The model-block suffix of a tuning's rows (``LoRA``); an unregistered tuning shows its name."""
    return method_info(tuning).get("block_label") or tuning


def tuning_row_label(tuning: str) -> str | None:
    """The label of a tuning that names its own rows (``A3TUNE``), else ``None``."""
    return method_info(tuning).get("row_label")


def canonical_backbone(model: Any) -> str:
    """The paper-table backbone id for a model name or path (unknown names pass through)."""
    if not model:
        return "unknown"
    name = str(model).replace("\\", "/").rstrip("/").split("/")[-1]
    key = name.lower().replace("_", "-")
    return _ALIAS_TO_BACKBONE.get(key, name)


def backbone_label(backbone: str) -> str:
    return BACKBONE_DISPLAY.get(backbone, backbone)


def normalize_decoding(decoding: Any) -> str | None:
    """``None`` for the paper's unnamed default decoding, else the lower-case method name."""
    if decoding is None:
        return None
    d = str(decoding).strip().lower()
    return None if d in ("", "default", "none") else d


def metric_unit(metric: str) -> str:
    """How a stored metric is printed: ``percent`` (×100), ``fraction`` or ``ratio`` (both as stored).

    From :mod:`medbench.metric_registry` (``value`` for a metric it does not know).
    """
    return MR.unit(metric)


# ---- paper data --------------------------------------------------------------------------------
def paper_dir(root: str | Path | None = None) -> Path:
    """``results/paper`` next to the package (source checkout), else ``medbench/assets/paper``."""
    if root is not None:
        path = Path(root)
        if not path.is_dir():
            raise FileNotFoundError(f"paper tables directory {path} does not exist")
        return path
    candidates = [Path(__file__).resolve().parent.parent / "results" / "paper", ASSETS / "paper"]
    for path in candidates:
        if path.is_dir() and any(path.glob("table*.json")):
            return path
    raise FileNotFoundError(
        "the paper's tables were not found: looked for table*.json in "
        + " and ".join(str(p) for p in candidates)
        + " (a source checkout has them in results/paper/; pass root= to point elsewhere)"
    )


def load_paper_tables(root: str | Path | None = None) -> dict[int, dict]:
    """Every ``tableN.json`` of the paper directory, keyed by table number."""
    tables: dict[int, dict] = {}
    for path in sorted(paper_dir(root).glob("table*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        tables[int(data["table"])] = data
    return tables


def paper_index(paper: dict[int, dict], kind: str) -> dict[tuple, tuple[float, int]]:
    """(backbone, tuning, decoding, task, metric) → (printed value, table number) for one layout."""
    index: dict[tuple, tuple[float, int]] = {}
    for number in _KIND_PAPER_TABLES[kind]:
        table = paper.get(number)
        if table is None:
            continue
        for row in table["rows"]:
            for key, value in row["values"].items():
                task, _, metric = key.partition("/")
                k = (row["backbone"], row["tuning"], normalize_decoding(row.get("decoding")), task, metric)
                index.setdefault(k, (value, number))
    return index


# ---- result files ------------------------------------------------------------------------------
def collect_results(results_dir: str | Path) -> list[dict]:
    """Every ``results.json`` under ``results_dir`` (or that one file), each with ``_path`` added.

    Unreadable files are skipped with a warning naming them.
    """
    root = Path(results_dir)
    if not root.exists():
        raise FileNotFoundError(f"results directory {root} does not exist")
    paths = [root] if root.is_file() else sorted(root.rglob("results.json"))
    out = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping {path}: not readable JSON ({exc})", stacklevel=2)
            continue
        if not isinstance(data, dict) or "task" not in data or "metrics" not in data:
            warnings.warn(f"skipping {path}: not a medbench results.json (no task/metrics)", stacklevel=2)
            continue
        split = data.get("split")
        if split is not None and split != _eval_split(data["task"]):
            warnings.warn(f"skipping {path}: a run on the {split} split (tables show the test split)", stacklevel=2)
            continue
        data["_path"] = str(path)
        out.append(data)
    return out


def _eval_split(task: str) -> str:
    """The split a task's tables report (its class's ``eval_split``; ``test`` for unknown tasks)."""
    from medbench.registry import TASKS

    try:
        return str(TASKS.get(task).eval_split)
    except Exception:
        return "test"


def _lookup(mapping: Any, metric: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    for name in (metric, *MR.aliases().get(metric, ())):
        if name in mapping:
            return mapping[name]
        for key, value in mapping.items():
            if key.split("@", 1)[0] == name:
                return value
    return None


def metric_value(result: dict, metric: str) -> float | None:
    """A metric's stored value (fraction) from a results.json dict, or ``None``."""
    value = _lookup(result.get("metrics"), metric)
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def metric_ci(result: dict, metric: str) -> tuple[float, float] | None:
    ci = _lookup(result.get("confidence_intervals"), metric)
    if ci is None:
        entry = _lookup(result.get("metrics"), metric)
        ci = entry.get("ci") if isinstance(entry, dict) else None
    if isinstance(ci, dict) and ci.get("low") is not None and ci.get("high") is not None:
        return float(ci["low"]), float(ci["high"])
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return float(ci[0]), float(ci[1])
    return None


def finished_at(result: dict) -> str:
    timing = result.get("timing")
    return str(timing.get("finished_at") or "") if isinstance(timing, dict) else ""


def preference(result: dict) -> tuple:
    """Sort key: the best result has no limit, then the newest ``timing.finished_at``."""
    return (result.get("limit") is None, finished_at(result))


def display_scale(metric: str) -> tuple[float, int]:
    """(multiplier, decimals) that turn a stored value into the printed number (the metric registry's)."""
    return MR.display_scale(metric)


# ---- grid model --------------------------------------------------------------------------------
@dataclass
class Cell:
    value: float | None = None  # display scale
    result: dict | None = None
    substituted: bool = False  # greedy result placed in a default-decoding (base) row
    paper: float | None = None
    paper_table: int | None = None

    @property
    def limited(self) -> bool:
        return self.result is not None and self.result.get("limit") is not None

    @property
    def failed(self) -> int:
        counts = (self.result or {}).get("counts")
        n = counts.get("failed") if isinstance(counts, dict) else None
        return int(n) if isinstance(n, (int, float)) else 0


@dataclass
class Row:
    backbone: str
    tuning: str
    decoding: str | None
    args: str = ""
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    paper_row: bool = False  # the paper has a row with this (backbone, tuning, decoding)

    @property
    def model_label(self) -> str:
        base = backbone_label(self.backbone)
        return base if self.tuning == "none" else f"{base} + {tuning_block_label(self.tuning)}"

    @property
    def method_label(self) -> str:
        own = tuning_row_label(self.tuning)
        if own is not None:
            label = own if self.decoding is None else f"{own} → {self._dec_label()}"
        elif self.decoding is None:
            label = self.model_label
        else:
            label = self._dec_label()
        return f"{label} [{self.args}]" if self.args else label

    def _dec_label(self) -> str:
        return method_info(self.decoding or "").get("label") or self.decoding or ""

    def sort_key(self) -> tuple:
        bb = (
            _BACKBONE_ORDER.index(self.backbone) if self.backbone in _BACKBONE_ORDER else len(_BACKBONE_ORDER)
        )
        tunings = ["none", *method_order("tuning")]
        decodings = method_order("decoding")
        tu = tunings.index(self.tuning) if self.tuning in tunings else len(tunings)
        d = self.decoding
        de = -1 if d is None else decodings.index(d) if d in decodings else len(decodings)
        return (bb, self.backbone, tu, self.tuning, de, d or "", self.args)


def _place(backbone: str, tuning: str, decoding: str | None, paper_rows: set) -> tuple[str | None, bool]:
    """The row decoding a result fills, and whether a greedy result stands in for a base row."""
    if (
        decoding == "greedy"
        and (backbone, tuning, "greedy") not in paper_rows
        and (tuning_row_label(tuning) is not None or (backbone, tuning, None) in paper_rows)
    ):
        return None, True
    return decoding, False


def build_rows(
    kind: str, results: list[dict], compare_paper: bool, paper: dict[int, dict] | None
) -> list[Row]:
    metrics = MR.layout_metrics(kind)  # read now: a metric registered after import is a column too
    pindex = paper_index(paper, kind) if paper else {}
    paper_rows = {k[:3] for k in pindex}
    groups: dict[tuple, list[tuple[dict, bool]]] = {}
    for res in results:
        if not any(metric_value(res, m) is not None for m in metrics):
            continue
        bb = canonical_backbone(res.get("model"))
        tuning = str(res.get("tuning") or "none").lower()
        dec, sub = _place(bb, tuning, normalize_decoding(res.get("decoding")), paper_rows)
        groups.setdefault((bb, tuning, dec), []).append((res, sub))

    rows: list[Row] = []
    for (bb, tuning, dec), members in groups.items():
        varying = _varying_args([r for r, _ in members])
        by_args: dict[str, Row] = {}
        for r, sub in members:
            flat = _flat(r.get("method_args") or {})
            label = ", ".join(f"{k}={flat.get(k, 'default')}" for k in varying)
            row = by_args.get(label)
            if row is None:
                row = by_args[label] = Row(bb, tuning, dec, label, paper_row=(bb, tuning, dec) in paper_rows)
            task = str(r.get("task"))
            for m in metrics:
                v = metric_value(r, m)
                if v is None:
                    continue
                cur = row.cells.get((task, m))
                if cur is None or preference(r) > preference(cur.result):
                    row.cells[(task, m)] = Cell(v * display_scale(m)[0], r, sub)
        rows += by_args.values()

    if compare_paper and pindex:
        by_row: dict[tuple, dict[tuple[str, str], tuple[float, int]]] = {}
        for (bb, tuning, dec, task, m), hit in pindex.items():
            by_row.setdefault((bb, tuning, dec), {})[(task, m)] = hit
        for row in rows:
            for tm, (value, number) in by_row.get((row.backbone, row.tuning, row.decoding), {}).items():
                cell = row.cells.setdefault(tm, Cell())
                cell.paper, cell.paper_table = value, number
    rows.sort(key=Row.sort_key)
    return rows


def _varying_args(results: list[dict]) -> list[str]:
    """Method-argument names whose values differ between results of one composition on one task.

    Those split a composition into one row per setting; arguments that only differ across tasks
    (e.g. a task's ``max_new_tokens``) do not.
    """
    per_task: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        per_task.setdefault(str(r.get("task")), []).append(_flat(r.get("method_args") or {}))
    varying: set[str] = set()
    for flats in per_task.values():
        for name in {n for f in flats for n in f}:
            if len({json.dumps(f.get(name), sort_keys=True, default=str) for f in flats}) > 1:
                varying.add(name)
    return sorted(varying)


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _columns(kind: str, rows: list[Row]) -> list[tuple[str, str]]:
    present = {tm for r in rows for tm, c in r.cells.items() if c.value is not None}
    if not present:
        return list(_KIND_DEFAULT_COLUMNS[kind])
    metrics = MR.layout_metrics(kind)

    def key(tm: tuple[str, str]) -> tuple:
        t, m = tm
        ti = TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER)
        return (ti, t, metrics.index(m))

    return sorted(present, key=key)


# ---- formatting --------------------------------------------------------------------------------
def fmt_number(value: float | None, decimals: int | None) -> str:
    if value is None:
        return MISSING
    if decimals is None:
        return f"{value:,}" if isinstance(value, int) else format(value, "g")
    return f"{value:.{decimals}f}"


def fmt_delta(value: float | None, decimals: int) -> str:
    return MISSING if value is None else f"{round(value, decimals) + 0.0:+.{decimals}f}"  # no "-0.00"


MC_LABEL = "Accuracy (MC)"


def column_label(task: str, metric: str, mc: bool = False) -> tuple[str, str]:
    """(dataset, metric) header of a column; ``mc``: the accuracy of multiple-choice answers."""
    return TASK_LABELS.get(task, task), MC_LABEL if mc else MR.label(metric)


def _task_protocol(task: str) -> str | None:
    """The registered task's metric protocol (None for a task this medbench does not know)."""
    from medbench.registry import TASKS

    if task not in TASKS:
        return None
    try:
        return str(getattr(TASKS.get(task), "metric_protocol", "") or "") or None
    except Exception:  # a broken plugin task: its results still render, labelled by the metric
        return None


def _mc_columns(rows: list[Row], columns: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Accuracy columns whose answers are multiple choice, with their protocol (e.g. ``mc@difflib``).

    A column is multiple choice when every result in it was scored by an ``mc@`` protocol; an empty
    column follows its task's registered protocol. The paper prints OmniMedVQA's multiple-choice
    accuracy in its "Closed" column; medbench keeps that column and labels it for what it holds.
    """
    out: dict[tuple[str, str], str] = {}
    for t, m in columns:
        if MR.lookup(m) is None or MR.lookup(m).name != "closed_accuracy":
            continue
        protos = {str(c.result.get("metric_protocol")) for r in rows
                  if (c := r.cells.get((t, m))) is not None and c.value is not None and c.result is not None}
        if not protos:
            own = _task_protocol(t)
            protos = {own} if own else set()
        if protos and all(p.startswith("mc@") for p in protos):
            out[(t, m)] = ", ".join(sorted(protos))
    return out


@dataclass
class Grid:
    """A rendered table: column descriptors (group, label), row headers and string cells."""

    title: str
    row_headers: tuple[str, ...]
    columns: list[tuple[str, str]]
    rows: list[tuple[tuple[str, ...], list[str]]]
    footnotes: list[str]
    transpose: bool = False
    col_headers: tuple[str, str] = ("Dataset", "Metric")

    def table(self) -> tuple[list[str], list[list[str]]]:
        if not self.transpose:
            headers = [*self.row_headers, *(f"{g} {lab}".strip() for g, lab in self.columns)]
            return headers, [[*h, *cells] for h, cells in self.rows]
        headers = [*self.col_headers, *(_joined_header(h) for h, _ in self.rows)]
        body = [[g, lab, *(cells[i] for _, cells in self.rows)] for i, (g, lab) in enumerate(self.columns)]
        return headers, body


def _joined_header(h: tuple[str, ...]) -> str:
    model, method = h[0], h[-1]
    return model if model == method or not model else f"{model} → {method}"


def build_grid(
    kind: str, results: list[dict], compare_paper: bool = False, paper: dict | None = None
) -> Grid:
    rows = build_rows(kind, results, compare_paper, paper)
    columns = _columns(kind, rows)
    mc_columns = _mc_columns(rows, columns)
    limited: set[int] = set()
    any_sub = any_failed = False
    protocols: dict[tuple[str, str], set[str]] = {}
    out_cols: list[tuple[str, str]] = []
    for t, m in columns:
        g, lab = column_label(t, m, (t, m) in mc_columns)
        out_cols.append((g, lab))
        if compare_paper:
            out_cols += [(g, f"{lab} (paper)"), (g, f"{lab} Δ")]
    out_rows = []
    for row in rows:
        cells_out: list[str] = []
        row_sub = False
        for t, m in columns:
            cell = row.cells.get((t, m), Cell())
            _, dec = display_scale(m)
            text = fmt_number(cell.value, dec)
            if cell.value is not None:
                if cell.limited:
                    text += LIMITED_MARK
                    limited.add(int(cell.result["limit"]))
                if cell.failed:
                    text += FAILED_MARK
                    any_failed = True
                proto = cell.result.get("attention_protocol" if kind == "attention" else "metric_protocol")
                protocols.setdefault((t, m), set()).add(json.dumps(proto, sort_keys=True, default=str))
            cells_out.append(text)
            row_sub = row_sub or (cell.value is not None and cell.substituted and row.paper_row)
            if compare_paper:
                delta = None
                if cell.value is not None and cell.paper is not None:
                    delta = round(cell.value, dec) - cell.paper
                cells_out += [fmt_number(cell.paper, dec), fmt_delta(delta, dec)]
        method = row.method_label + (SUBSTITUTED_MARK if row_sub else "")
        any_sub = any_sub or row_sub
        out_rows.append(((row.model_label, method), cells_out))
    notes = []
    if not out_rows:
        notes.append("No results for this table.")
    if limited:
        notes.append(
            f"{LIMITED_MARK} limited run (--limit {', '.join(map(str, sorted(limited)))}): computed on a "
            "subset of the test set, not comparable with full-test-set numbers."
        )
    if any_failed:
        notes.append(f"{FAILED_MARK} the run had failed samples (counts.failed > 0).")
    if any_sub:
        notes.append(
            f"{SUBSTITUTED_MARK} medbench greedy decoding in a row whose paper numbers use the paper's "
            "unstated default decoding."
        )
    if compare_paper:
        notes.append(
            "Paper values: A3Tune paper, Tables "
            + ", ".join(map(str, _KIND_PAPER_TABLES[kind]))
            + "; Δ = ours − paper."
        )
    for (t, m), proto in mc_columns.items():
        g, lab = column_label(t, m, True)
        where = (f"the paper's {g} column (printed there as \"{MR.label(m)}\")"
                 if (t, m) in _KIND_DEFAULT_COLUMNS.get(kind, ()) else f"the {MR.label(m)} column")
        notes.append(f"{g} {lab}: multiple-choice accuracy ({proto}: the prediction and the answer each mapped "
                     f"to the most similar option), in {where}.")
    for (t, m), protos in protocols.items():
        if len(protos) > 1:
            g, lab = column_label(t, m, (t, m) in mc_columns)
            notes.append(f"Column {g} {lab} mixes metric protocols: {', '.join(sorted(protos))}.")
    return Grid(
        KIND_TITLES[kind], ("Model", "Method"), out_cols, out_rows, notes, transpose=(kind == "report")
    )


def _grid_json(kind: str, results: list[dict], compare_paper: bool, paper: dict | None) -> dict:
    rows = build_rows(kind, results, compare_paper, paper)
    columns = _columns(kind, rows)
    out = []
    for row in rows:
        cells = {}
        for t, m in columns:
            cell = row.cells.get((t, m))
            if cell is None:
                continue
            _, dec = display_scale(m)
            entry: dict[str, Any] = {"value": None if cell.value is None else round(cell.value, dec)}
            if cell.result is not None:
                mult, _ = display_scale(m)
                ci = metric_ci(cell.result, m)
                entry.update(
                    {
                        "limit": cell.result.get("limit"),
                        "limited": cell.limited,
                        "ci": None if ci is None else [round(ci[0] * mult, dec), round(ci[1] * mult, dec)],
                        "source": cell.result.get("_path"),
                        "substituted_default": cell.substituted,
                    }
                )
            if compare_paper:
                entry["paper"] = cell.paper
                entry["paper_table"] = cell.paper_table
                entry["delta"] = (
                    None
                    if cell.value is None or cell.paper is None
                    else round(round(cell.value, dec) - cell.paper, dec)
                )
            cells[f"{t}/{m}"] = entry
        out.append(
            {
                "model": row.model_label,
                "method": row.method_label,
                "backbone": row.backbone,
                "tuning": row.tuning,
                "decoding": row.decoding,
                "args": row.args or None,
                "cells": cells,
            }
        )
    grid = build_grid(kind, results, compare_paper, paper)
    mc_columns = _mc_columns(rows, columns)
    return {
        "table": kind,
        "title": KIND_TITLES[kind],
        "scale": "fraction" if kind == "attention" else "percent",
        "columns": [{"key": f"{t}/{m}", "label": " ".join(column_label(t, m, (t, m) in mc_columns)),
                     "scale": metric_unit(m), **({"answer_type": "mc", "protocol": mc_columns[(t, m)]}
                                                 if (t, m) in mc_columns else {})}
                    for t, m in columns],
        "rows": out,
        "footnotes": grid.footnotes,
    }


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for k, v in _LATEX_UNICODE.items():
        out = out.replace(k, v)
    return out


def format_table(
    title: str, headers: list[str], body: list[list[str]], footnotes: list[str], fmt: str
) -> str:
    """One table in markdown, latex or csv (json is built by the callers)."""
    if fmt == "markdown":
        text = f"**{title}**\n\n" + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
        escaped = ("\\" + n if n.startswith("*") else n for n in footnotes)  # not a list bullet
        return text + "".join(f"\n\n{n}" for n in escaped)
    if fmt == "latex":
        esc_body = [[latex_escape(c) for c in r] for r in body]
        table = tabulate(
            esc_body, headers=[latex_escape(h) for h in headers], tablefmt="latex_raw", disable_numparse=True
        )
        return f"% {title}\n" + table + "".join(f"\n\n{latex_escape(n)}" for n in footnotes)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(body)
        if footnotes:
            buf.write("\n" + "".join(f"# {n}\n" for n in footnotes))
        return buf.getvalue().rstrip("\n")
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def render(
    table: str,
    results: list[dict],
    fmt: str = "markdown",
    compare_paper: bool = False,
    paper: dict[int, dict] | None = None,
) -> str:
    """Render ``vqa``, ``attention``, ``report`` or ``all`` from result dicts in ``fmt``.

    ``paper`` defaults to :func:`load_paper_tables`; it places rows as the paper does and, with
    ``compare_paper``, adds the paper's value and the delta beside each of ours.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kinds = TABLE_KINDS if table == "all" else (table,)
    for k in kinds:
        if k not in TABLE_KINDS:
            raise ValueError(f"unknown table {table!r}; choose one of {', '.join((*TABLE_KINDS, 'all'))}")
    if paper is None:
        try:
            paper = load_paper_tables()
        except FileNotFoundError:
            if compare_paper:
                raise
            paper = {}
    if fmt == "json":
        data = {k: _grid_json(k, results, compare_paper, paper) for k in kinds}
        return json.dumps(data if table == "all" else data[table], indent=1, ensure_ascii=False)
    parts = []
    for k in kinds:
        grid = build_grid(k, results, compare_paper, paper)
        headers, body = grid.table()
        text = format_table(grid.title, headers, body, grid.footnotes, fmt)
        parts.append(f"# {grid.title}\n{text}" if fmt == "csv" and table == "all" else text)
    return "\n\n".join(parts)


def paper_table_grid(table: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and string rows of one paper table, laid out as printed."""
    dec = table.get("decimals")
    cols = table["columns"]
    labels = table.get("column_labels", {})
    layout = table.get("layout", "methods_as_rows")
    rows = table["rows"]
    if layout == "methods_as_columns":
        headers = [table.get("group_header", "Dataset"), table.get("metric_header", "Metric")]
        headers += [r["row"] for r in rows]
        body = [
            [*labels.get(c, ["", c])[:2], *(fmt_number(r["values"].get(c), dec) for r in rows)] for c in cols
        ]
        return headers, body
    lead: list[str] = []
    if layout == "settings":
        lead = [table.get("group_header", "Task")]
    elif "model_header" in table:
        lead = [table["model_header"]]
    headers = [*lead, table.get("method_header", "Method")]
    headers += [" ".join(labels.get(c, [c])) for c in cols]
    body = []
    for r in rows:
        first = [r.get("group", "")] if layout == "settings" else [r.get("model") or ""] if lead else []
        body.append([*first, r["row"], *(fmt_number(r["values"].get(c), dec) for c in cols)])
    return headers, body


def render_paper_table(number: int, fmt: str = "markdown", root: str | Path | None = None) -> str:
    """Any table of the paper from ``results/paper/``, numbers exactly as printed."""
    tables = load_paper_tables(root)
    if number not in tables:
        raise KeyError(f"the paper has no table {number} in {paper_dir(root)}; known: {sorted(tables)}")
    table = tables[number]
    headers, body = paper_table_grid(table)
    title = f"Table {number}: {table['title']}"
    if fmt == "json":
        return json.dumps(
            {
                "table": number,
                "title": table["title"],
                "source": table.get("source"),
                "scale": table.get("scale"),
                "headers": headers,
                "rows": body,
            },
            indent=1,
            ensure_ascii=False,
        )
    notes = [f"Source: {table.get('source', f'A3Tune paper, Table {number}')}; scale: {table.get('scale')}."]
    return format_table(title, headers, body, notes if fmt != "csv" else [], fmt)
