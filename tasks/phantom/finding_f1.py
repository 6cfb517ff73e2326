"""Finding-F1: the per-sample F1 between the finding sets of a reference and a predicted report.

A *labeler* turns a report into a set of ``(category, value)`` findings (each phantom version has
its own, mirroring its report templates); ``finding_f1 = 2|R ∩ P| / (|R| + |P|)`` per sample, an
empty prediction scores 0 (counted ``n_empty``), two empty sets score 1; the aggregate is the mean
with a percentile-bootstrap CI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from medbench.metrics import Metric, MetricResult, scoreable_rows
from medbench.metrics.bootstrap import mean_and_ci

Finding = tuple[str, str]
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")
Labeler = Callable[[str | None], frozenset[Finding]]


def sentences(text: str | None) -> Iterator[str]:
    """The lower-cased sentences of a report, commas dropped, whitespace collapsed, end marks stripped."""
    for raw in _SENTENCE_SPLIT.split(str(text or "").lower()):
        s = " ".join(raw.replace(",", " ").split()).strip(" .!?;:")
        if s:
            yield s


def finding_f1(reference: frozenset[Finding] | set[Finding],
               prediction: frozenset[Finding] | set[Finding]) -> float:
    """F1 between two finding sets (1.0 when both are empty)."""
    if not reference and not prediction:
        return 1.0
    return 2.0 * len(set(reference) & set(prediction)) / (len(reference) + len(prediction))


class FindingF1(Metric):
    """Per-sample Finding-F1 between reference and predicted phantom reports (key ``finding_f1``)."""

    name: ClassVar[str] = "phantom_findings"

    def __init__(self, labeler: Labeler, protocol: str, description: str, *, seed: int = 0,
                 n_resamples: int = 1000, level: float = 0.95) -> None:
        self.label_report = labeler
        self.protocol = protocol
        self.description = description
        self.seed = seed
        self.n_resamples = n_resamples
        self.level = level

    def details(self) -> dict[str, Any]:
        """The protocol record written to ``metric_details``."""
        return {"protocol": self.protocol, "labeler": self.description}

    def compute(self, rows: Sequence[Mapping[str, Any] | Any]) -> dict[str, MetricResult]:
        ok, n_errors = scoreable_rows(rows)
        per_sample: dict[str, float] = {}
        n_empty = n_no_ref = 0
        for row in ok:
            prediction = str(row.get("prediction") or "")
            reference = self.label_report(row.get("answer"))
            n_no_ref += not reference
            if not prediction.strip():
                n_empty += 1
                per_sample[row["id"]] = 0.0
                continue
            per_sample[row["id"]] = finding_f1(reference, self.label_report(prediction))
        value, ci = mean_and_ci(list(per_sample.values()), n_resamples=self.n_resamples, seed=self.seed,
                                level=self.level)
        counts = {"n_rows": len(ok) + n_errors, "errors": n_errors, "n_empty": n_empty,
                  "no_reference_findings": n_no_ref}
        result = MetricResult(name="finding_f1", value=value, per_sample=per_sample, n=len(per_sample),
                              protocol=self.protocol, ci=ci, counts=counts)
        return {"finding_f1": result}
