"""Every reported metric's display facts, declared once: label, table layout, unit, direction, aliases.

``results.json`` stores every metric as it was computed (fractions in [0, 1], or ratios for
``roi_lift``/``attention_peak``); this registry says how to show one. :mod:`medbench.tables`
(the paper layouts) and :mod:`medbench.compare` / :mod:`medbench.paired` (diffs) both read it,
so a metric prints the same everywhere.

Units and the printed scale (:func:`display_scale`):

- ``percent``: ×100, 2 decimals (VQA and report metrics, as the paper prints them);
- ``fraction``: as stored, 3 decimals (coverage, intensity, RoI mass);
- ``ratio``: as stored, 3 decimals (1.0 = uniform attention; never ×100);
- a metric not registered here: as stored, 4 decimals.

A metric is looked up by its name, an alias (``closed_acc``, ``bertscore_f1`` …), or either with an
``@protocol`` suffix. Adding a metric that should be a table column is one :func:`register` call
(here for built-ins; a plugin may call it at import).

This module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

UNIT_SCALE = {"percent": (100.0, 2), "fraction": (1.0, 3), "ratio": (1.0, 3)}
#: How a metric this registry does not know is shown: as stored, 4 decimals.
UNKNOWN_SCALE = (1.0, 4)
#: The paper layouts a metric can be a column of (``medbench table --table ...``).
LAYOUTS = ("vqa", "attention", "report")


@dataclass(frozen=True)
class MetricInfo:
    """One metric: ``layout`` is the paper table it is a column of (``None``: no table column)."""

    name: str
    label: str
    unit: str
    layout: str | None = None
    higher_is_better: bool = True
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.unit not in UNIT_SCALE:
            raise ValueError(f"metric {self.name}: unit must be one of {', '.join(UNIT_SCALE)}, got {self.unit!r}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"metric {self.name}: layout must be one of {', '.join(LAYOUTS)} or None")

    @property
    def scale(self) -> tuple[float, int]:
        """(multiplier, decimals) that turn a stored value into the printed number."""
        return UNIT_SCALE[self.unit]


_METRICS: dict[str, MetricInfo] = {}
_BY_ALIAS: dict[str, str] = {}


def register(info: MetricInfo) -> MetricInfo:
    """Add a metric; a name or alias that is already taken is an error."""
    for key in (info.name, *info.aliases):
        if key in _METRICS or key in _BY_ALIAS:
            raise ValueError(f"metric name {key!r} is already registered")
    _METRICS[info.name] = info
    _BY_ALIAS.update({a: info.name for a in info.aliases})
    return info


def lookup(metric: str) -> MetricInfo | None:
    """The registered metric named ``metric`` (or an alias, with or without ``@protocol``), else None."""
    base = metric.split("@", 1)[0]
    name = base if base in _METRICS else _BY_ALIAS.get(base)
    return None if name is None else _METRICS[name]


def display_scale(metric: str) -> tuple[float, int]:
    """(multiplier, decimals) for printing a stored value of ``metric``."""
    info = lookup(metric)
    return UNKNOWN_SCALE if info is None else info.scale


def unit(metric: str) -> str:
    """``percent``, ``fraction``, ``ratio``, or ``value`` for a metric this registry does not know."""
    info = lookup(metric)
    return "value" if info is None else info.unit


def higher_is_better(metric: str) -> bool | None:
    """The metric's direction; ``None`` when it is not registered."""
    info = lookup(metric)
    return None if info is None else info.higher_is_better


def layout_metrics(layout: str) -> tuple[str, ...]:
    """The column metrics of one paper layout, in registration (column) order."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return tuple(m.name for m in _METRICS.values() if m.layout == layout)


def aliases() -> dict[str, tuple[str, ...]]:
    """Metric name → its alternative spellings, for every metric that has any."""
    return {m.name: m.aliases for m in _METRICS.values() if m.aliases}


def label(metric: str) -> str:
    info = lookup(metric)
    return metric if info is None else info.label


def names() -> list[str]:
    return list(_METRICS)


# ---- built-in metrics (column order within a layout = the order here) --------------------------
# fmt: off
for _m in (
    # VQA (paper Table 1)
    MetricInfo("open_recall", "Open", "percent", "vqa"),
    MetricInfo("closed_accuracy", "Closed", "percent", "vqa", aliases=("closed_acc", "mc_accuracy", "mc")),
    MetricInfo("open_precision", "Open precision", "percent"),
    MetricInfo("open_f1", "Open F1", "percent"),
    MetricInfo("open_em", "Open EM", "percent"),
    MetricInfo("accuracy", "Accuracy", "percent"),
    MetricInfo("acc", "Accuracy", "percent"),
    # attention (paper Table 2, then medbench's raw-map columns)
    MetricInfo("coverage", "Coverage", "fraction", "attention"),
    MetricInfo("intensity", "Intensity", "fraction", "attention"),
    MetricInfo("roi_mass", "RoI mass", "fraction", "attention"),
    MetricInfo("roi_lift", "RoI lift", "ratio", "attention"),
    MetricInfo("attention_peak", "Peak", "ratio", "attention"),
    # report generation (paper Table 3)
    MetricInfo("bleu1", "BLEU-1", "percent", "report"),
    MetricInfo("bleu2", "BLEU-2", "percent", "report"),
    MetricInfo("bleu3", "BLEU-3", "percent", "report"),
    MetricInfo("bleu4", "BLEU-4", "percent", "report"),
    MetricInfo("rouge_l", "ROUGE-L", "percent", "report", aliases=("rougeL", "rouge")),
    MetricInfo("meteor", "METEOR", "percent", "report"),
    MetricInfo("cider", "CIDEr", "percent", "report"),
    MetricInfo("bertscore", "BERTScore", "percent", "report", aliases=("bertscore_f1",)),
    MetricInfo("chexbert", "CheXbert", "percent", "report", aliases=("chexbert_semb",)),
    MetricInfo("radgraph", "RadGraph", "percent", "report", aliases=("radgraph_f1_partial", "radgraph_f1")),
    MetricInfo("ratescore", "RaTEScore", "percent", "report"),
):
    register(_m)
# fmt: on
