"""Scoring: VQA protocols, attention Coverage/Intensity, lexical report metrics, bootstrap CIs.

Every metric family is a :class:`Metric` whose ``compute(rows)`` returns aggregate and
per-sample values together as :class:`MetricResult` objects keyed by the result-file metric name
(``closed_accuracy``, ``open_recall``, ``coverage``, ``bleu4`` ...). The protocol that produced a
number is recorded on the metric and on each result, never baked into the key. Submodules are
imported on demand; importing this package pulls in nothing heavy.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "Metric",
    "MetricResult",
    "MetricUnavailable",
    "as_row",
    "check_unique_ids",
    "scoreable_rows",
]


class MetricUnavailable(RuntimeError):
    """A metric cannot run in this environment (missing Java, package or weights).

    Callers catch it, record the message and go on computing the other metric families.
    """


@dataclass
class MetricResult:
    """One metric over one set of rows.

    ``value`` is the headline (a per-sample mean, or the corpus score for corpus metrics); it is
    ``None`` when nothing was scored, never NaN. ``per_sample`` maps sample id to its score
    (``None`` when a metric has no per-sample form). ``ci`` is the bootstrap dict from
    :mod:`medbench.metrics.bootstrap` or ``None``; ``counts`` records excluded rows and guards.
    """

    name: str
    value: float | None
    per_sample: dict[str, float] | None
    n: int
    higher_is_better: bool = True
    protocol: str = ""
    ci: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_per_sample(
        cls,
        name: str,
        per_sample: Mapping[str, float],
        *,
        protocol: str = "",
        higher_is_better: bool = True,
        counts: Mapping[str, int] | None = None,
    ) -> MetricResult:
        """Build a mean-of-per-sample result; an empty mapping gives ``value=None``."""
        values = {str(k): float(v) for k, v in per_sample.items()}
        if any(not math.isfinite(v) for v in values.values()):
            raise ValueError(f"{name}: non-finite per-sample value")
        value = math.fsum(values.values()) / len(values) if values else None
        return cls(
            name=name,
            value=value,
            per_sample=values,
            n=len(values),
            higher_is_better=higher_is_better,
            protocol=protocol,
            counts=dict(counts or {}),
        )

    def to_json(self, *, per_sample: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (``per_sample`` can be left out for compact summaries)."""
        out: dict[str, Any] = {
            "name": self.name,
            "value": self.value,
            "n": self.n,
            "higher_is_better": self.higher_is_better,
            "protocol": self.protocol,
            "ci": self.ci,
            "counts": dict(self.counts),
        }
        if per_sample:
            out["per_sample"] = self.per_sample
        return out


class Metric(ABC):
    """A metric family: ``compute(rows)`` gives every key it owns, aggregate and per-sample.

    Rows are mappings (or dataclasses such as :class:`medbench.types.Prediction`) with at least
    ``id``; a row whose ``error`` is not ``None`` is excluded and counted, never scored.
    """

    name: ClassVar[str]
    protocol: str

    @abstractmethod
    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        """Score ``rows``; returns ``{key: MetricResult}``."""


def as_row(obj: Any) -> dict[str, Any]:
    """A plain dict view of a row given as a mapping or a dataclass instance.

    Enum values (such as :class:`medbench.types.AnswerType`) are replaced by their ``value``.
    """
    if isinstance(obj, Mapping):
        row = dict(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        row = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    else:
        raise TypeError(f"a row must be a mapping or a dataclass instance, got {type(obj).__name__}")
    if "id" not in row:
        raise ValueError(f"row has no 'id': {sorted(row)}")
    row["id"] = str(row["id"])
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in row.items()}


def preview_ids(ids: Iterable[str], limit: int = 5) -> str:
    """Up to ``limit`` sorted ids for an error message."""
    items = sorted(ids)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def check_unique_ids(rows: Sequence[Mapping[str, Any]], what: str = "rows") -> None:
    """Raise ``ValueError`` naming the duplicated ids, if any."""
    seen: set[str] = set()
    dup: set[str] = set()
    for row in rows:
        rid = str(row["id"])
        (dup if rid in seen else seen).add(rid)
    if dup:
        raise ValueError(f"duplicate id(s) in {what}: {preview_ids(dup)}")


def scoreable_rows(rows: Sequence[Any]) -> tuple[list[dict[str, Any]], int]:
    """Convert rows with :func:`as_row`, check ids are unique and drop error rows.

    Returns ``(rows_to_score, n_errors)``.
    """
    converted = [as_row(r) for r in rows]
    check_unique_ids(converted)
    ok = [r for r in converted if r.get("error") is None]
    return ok, len(converted) - len(ok)


def mean_results(
    scores: Mapping[str, Mapping[str, float]],
    *,
    protocol: str,
    counts: Mapping[str, int],
    bootstrap: bool,
    n_resamples: int,
    seed: int,
    level: float,
) -> dict[str, MetricResult]:
    """Mean-of-per-sample results for several keys, each with its percentile-bootstrap CI."""
    from medbench.metrics.bootstrap import bootstrap_mean

    results: dict[str, MetricResult] = {}
    for key, per_sample in scores.items():
        result = MetricResult.from_per_sample(key, per_sample, protocol=protocol, counts=counts)
        if bootstrap:
            result.ci = bootstrap_mean(list(per_sample.values()), n_resamples=n_resamples, seed=seed, level=level)
        results[key] = result
    return results
