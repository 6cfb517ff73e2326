"""Multiple-choice scoring ``mc@difflib`` (A³TUNE's ``--mc`` path = CARES ``eval_multichoice.py``).

The prediction and the label are each mapped to the option with the highest
``difflib.SequenceMatcher(None, option, text).ratio()`` (strict ``>`` from 0, so the first option
wins ties and all-zero ratios map to no option). Correct iff both map to the same option; a
prediction that maps to no option is incorrect (medbench decision, spec §3).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from medbench.metrics import Metric, MetricResult, as_row, scoreable_rows
from medbench.metrics.bootstrap import mean_and_ci


def best_option(text: str, options: Sequence[str]) -> tuple[int | None, float]:
    """Index of the most similar option (None if every ratio is 0) and its ratio."""
    best, best_ratio = None, 0.0
    for i, option in enumerate(options):
        ratio = difflib.SequenceMatcher(None, option, text).ratio()
        if ratio > best_ratio:
            best, best_ratio = i, ratio
    return best, best_ratio


def mc_hit(prediction: str, label: str, options: Sequence[str]) -> bool:
    pred_idx, _ = best_option(prediction, options)
    label_idx, _ = best_option(label, options)
    return pred_idx is not None and pred_idx == label_idx


class MCMetrics(Metric):
    """``closed_accuracy`` under ``mc@difflib``; rows need ``options`` (list of option texts).

    The metric keeps the paper's column name (Table 1 reports OmniMedVQA in its closed-accuracy
    column); its ``counts`` name the rows ``mc`` (multiple choice), not ``closed``.
    """

    name = "mc"

    def __init__(self, *, seed: int = 0, n_resamples: int = 1000):
        self.protocol = "mc@difflib"
        self.seed = seed
        self.n_resamples = n_resamples

    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        good, errors = scoreable_rows([as_row(r) for r in rows])
        per_sample: dict[str, float] = {}
        for row in good:
            options = row.get("options")
            if not options:
                raise ValueError(f"row {row['id']}: mc@difflib needs the sample's options")
            per_sample[row["id"]] = float(mc_hit(row.get("prediction") or "", row["answer"], options))
        result = MetricResult.from_per_sample("closed_accuracy", per_sample, protocol=self.protocol,
                                              higher_is_better=True, counts={"errors": errors, "mc": len(good)})
        _, result.ci = mean_and_ci(list(per_sample.values()), n_resamples=self.n_resamples, seed=self.seed)
        return {"closed_accuracy": result}
