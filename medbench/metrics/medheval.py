"""Lexical report metrics, protocol ``medheval`` (spec §4, optional, for comparison with the paper).

MedHEval's ``report_eval`` (called, disabled, from A³TUNE's script) averages per-sample scores:
nltk ``sentence_bleu`` (BLEU-4, ``SmoothingFunction().method4``), nltk ``meteor_score`` and
rouge-score ROUGE-L F-measure with the Porter stemmer. Texts are tokenised for BLEU and METEOR
with ``nltk.word_tokenize`` (which is why punkt/punkt_tab are needed); METEOR lower-cases and uses
WordNet synonyms. Keys are ``bleu4@medheval``, ``meteor@medheval`` and ``rouge_l@medheval``: these
numbers are not interchangeable with the ``coco`` ones.

nltk data (punkt_tab for ``word_tokenize``, wordnet for METEOR) is provisioned ahead of time and only looked up here, never
downloaded. Empty predictions score 0 without calling the scorers and are counted (``n_empty``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import metadata
from typing import Any, ClassVar

from medbench.metrics import Metric, MetricResult, MetricUnavailable, scoreable_rows
from medbench.metrics.bootstrap import mean_and_ci

__all__ = ["MEDHEVAL_KEYS", "NLTK_RESOURCES", "MedHEvalReportMetrics", "require_medheval"]

MEDHEVAL_KEYS = ("bleu4@medheval", "meteor@medheval", "rouge_l@medheval")
NLTK_RESOURCES = {
    "punkt_tab": "tokenizers/punkt_tab/english/",
    "wordnet": "corpora/wordnet",
}
_INSTALL = "pip install nltk==3.10.4 rouge-score==0.1.2"


def require_medheval() -> dict[str, str | None]:
    """Check nltk, rouge-score and the nltk data; return their versions, else MetricUnavailable."""
    try:
        import nltk
        import rouge_score  # noqa: F401
    except ImportError as exc:
        raise MetricUnavailable(f"report@medheval needs nltk and rouge-score: {_INSTALL}") from exc
    missing = []
    for name, resource in NLTK_RESOURCES.items():
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(name)
    if missing:
        raise MetricUnavailable(
            f"report@medheval needs the nltk data {', '.join(missing)}, which medbench never downloads: "
            f"on a machine with network access run `python -m nltk.downloader -d DIR {' '.join(missing)}`, "
            f"copy DIR here and set NLTK_DATA=DIR (nltk searches: {', '.join(nltk.data.path)})"
        )
    versions = {}
    for package in ("nltk", "rouge-score"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


class MedHEvalReportMetrics(Metric):
    """Per-sample-mean BLEU-4, METEOR and ROUGE-L over rows with ``id``, ``prediction``, ``answer``."""

    name: ClassVar[str] = "report_medheval"

    def __init__(self, *, seed: int = 0, n_resamples: int = 1000, level: float = 0.95) -> None:
        self.protocol = "medheval"
        self.seed = seed
        self.n_resamples = n_resamples
        self.level = level

    def details(self) -> dict[str, Any]:
        """Protocol and package versions (checks that everything is in place)."""
        return {"protocol": "report@medheval", **require_medheval()}

    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        require_medheval()
        from nltk import word_tokenize
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from nltk.translate.meteor_score import meteor_score
        from rouge_score import rouge_scorer

        ok, n_errors = scoreable_rows(rows)
        smooth = SmoothingFunction().method4
        rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        columns: dict[str, list[float]] = {k: [] for k in MEDHEVAL_KEYS}
        n_empty = 0
        for row in ok:
            ref, hyp = str(row.get("answer") or ""), str(row.get("prediction") or "")
            if not hyp.strip():
                n_empty += 1
                for values in columns.values():
                    values.append(0.0)
                continue
            ref_tokens, hyp_tokens = word_tokenize(ref), word_tokenize(hyp)
            columns["bleu4@medheval"].append(float(sentence_bleu([ref_tokens], hyp_tokens, smoothing_function=smooth)))
            columns["meteor@medheval"].append(float(meteor_score([ref_tokens], hyp_tokens)))
            columns["rouge_l@medheval"].append(float(rouge.score(ref, hyp)["rougeL"].fmeasure))
        counts = {"n_rows": len(ok) + n_errors, "errors": n_errors, "n_empty": n_empty}
        results = {}
        for key, values in columns.items():
            if any(not math.isfinite(v) for v in values):
                raise ValueError(f"{key}: non-finite per-sample value")
            value, ci = mean_and_ci(values, n_resamples=self.n_resamples, seed=self.seed, level=self.level)
            results[key] = MetricResult(
                name=key,
                value=value,
                per_sample={r["id"]: v for r, v in zip(ok, values)},
                n=len(ok),
                protocol="report@medheval",
                ci=ci,
                counts=dict(counts),
            )
        return results
