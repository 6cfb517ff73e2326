"""VQA scoring protocols: ``llava_med`` (default), ``llava_med_batch`` and ``exact``.

``llava_med`` reproduces LLaVA-Med v1.0 ``llava/eval/run_eval.py`` after its closed-accuracy fix:
answers are lower-cased and passed through :func:`normalize_word`; a CLOSED item is a hit when the
prediction contains ``yes`` or ``no`` and the GT is a substring of it; OPEN items get token
recall/precision/F1 from word-count maps (normalised a second time, as the reference does) and the
reference's "exact match score". ``llava_med_batch`` (``run_eval_batch.py``) drops the yes/no gate
and adds the open substring hit; ``exact`` is normalised string equality.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from medbench.metrics import (
    Metric,
    MetricResult,
    as_row,
    check_unique_ids,
    mean_results,
    preview_ids,
    scoreable_rows,
)

__all__ = [
    "PROTOCOLS",
    "VQAMetrics",
    "closed_hit",
    "exact_hit",
    "join_by_id",
    "normalize_answer",
    "normalize_word",
    "open_em",
    "open_scores",
    "substring_hit",
]

PROTOCOLS = ("llava_med", "llava_med_batch", "exact")

PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The reference's pattern: the leading "(?!<=\d)" is a lookahead that never fails before a "."
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_MAX = 32  # the reference passes re.UNICODE (== 32) as re.sub's count
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# The VQA evaluation's contraction table, as copied into LLaVA-Med's glossary (keys verbatim).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip


def normalize_word(text: str) -> str:
    """LLaVA-Med's ``normalize_word``: punctuation, periods, number words, articles, contractions."""
    digit_comma = _COMMA_STRIP.search(text) is not None
    out = text
    for p in PUNCT:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out, count=_PERIOD_MAX)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")


def normalize_answer(text: str) -> str:
    """What the protocols compare: ``normalize_word(text.lower())``."""
    return normalize_word(str(text).lower())


def _word_counts(normalized: str) -> Counter[str]:
    """The reference's ``split_sentence(s, 1)`` after its second ``normalize_word``."""
    return Counter(normalize_word(normalized).lower().split())


def closed_hit(pred: str, gt: str) -> float:
    """``llava_med`` CLOSED rule: prediction has ``yes``/``no`` (substring) and contains the GT."""
    p, g = normalize_answer(pred), normalize_answer(gt)
    return 1.0 if ("yes" in p or "no" in p) and g in p else 0.0


def substring_hit(pred: str, gt: str) -> float:
    """``llava_med_batch`` rule, open and closed alike: the normalised GT is a substring."""
    return 1.0 if normalize_answer(gt) in normalize_answer(pred) else 0.0


def exact_hit(pred: str, gt: str) -> float:
    """``exact`` rule: normalised strings are equal."""
    return 1.0 if normalize_answer(pred) == normalize_answer(gt) else 0.0


def open_scores(pred: str, gt: str) -> tuple[float, float, float]:
    """Token ``(recall, precision, f1)`` of the reference's ``calculate_f1score``.

    tp sums *prediction* counts of shared words, so repeated words inflate recall. All three are 0
    when either side has no tokens or tp is 0.
    """
    pc, gc = _word_counts(normalize_answer(pred)), _word_counts(normalize_answer(gt))
    if not pc or not gc:
        return 0.0, 0.0, 0.0
    tp = sum(c for w, c in pc.items() if w in gc)
    if tp == 0:
        return 0.0, 0.0, 0.0
    fp = sum(c for w, c in pc.items() if w not in gc)
    fn = sum(c for w, c in gc.items() if w not in pc)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return recall, precision, 2 * precision * recall / (precision + recall)


def open_em(pred: str, gt: str) -> float:
    """The reference's "exact match score": unique GT words found / prediction token count."""
    pc, gc = _word_counts(normalize_answer(pred)), _word_counts(normalize_answer(gt))
    total = sum(pc.values())
    return sum(1 for w in gc if w in pc) / total if total else 0.0


def join_by_id(predictions: Sequence[Any], references: Sequence[Any]) -> list[dict[str, Any]]:
    """Join prediction rows to reference rows (e.g. :class:`~medbench.types.Sample`) by ``id``.

    Returns one row per reference, in reference order: the prediction's fields with ``answer``
    and ``answer_type`` taken from the reference. Missing, extra or duplicate ids raise
    ``ValueError``.
    """
    preds = [as_row(p) for p in predictions]
    refs = [as_row(r) for r in references]
    check_unique_ids(preds, "predictions")
    check_unique_ids(refs, "references")
    by_id = {p["id"]: p for p in preds}
    ref_ids = [r["id"] for r in refs]
    missing = set(ref_ids) - set(by_id)
    extra = set(by_id) - set(ref_ids)
    problems = []
    if missing:
        problems.append(f"{len(missing)} reference id(s) have no prediction: {preview_ids(missing)}")
    if extra:
        problems.append(f"{len(extra)} prediction id(s) are not in the references: {preview_ids(extra)}")
    if problems:
        raise ValueError("cannot join predictions to references by id: " + "; ".join(problems))
    joined = []
    for ref in refs:
        row = dict(by_id[ref["id"]])
        for key in ("answer", "answer_type"):
            if key in ref:
                row[key] = ref[key]
        joined.append(row)
    return joined


def _answer_type(row: dict[str, Any]) -> str:
    kind = str(row.get("answer_type", "")).lower()
    if kind not in ("open", "closed"):
        raise ValueError(f"row {row['id']!r}: answer_type must be 'open' or 'closed', got {kind!r}")
    return kind


class VQAMetrics(Metric):
    """VQA scores of one protocol over joined rows (id, prediction, answer, answer_type, error).

    ``llava_med`` gives ``closed_accuracy`` (CLOSED rows) and ``open_recall``, ``open_precision``,
    ``open_f1``, ``open_em`` (OPEN rows); ``llava_med_batch`` the same with the ungated closed
    rule plus ``open_accuracy`` (substring hit); ``exact`` gives ``accuracy``, ``closed_accuracy``
    and ``open_accuracy``. Each mean gets a percentile-bootstrap CI over its own subset.
    """

    name: ClassVar[str] = "vqa"

    def __init__(
        self,
        protocol: str = "llava_med",
        *,
        bootstrap: bool = True,
        n_resamples: int = 1000,
        seed: int = 0,
        level: float = 0.95,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown VQA protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.bootstrap = bootstrap
        self.n_resamples = n_resamples
        self.seed = seed
        self.level = level

    @property
    def keys(self) -> tuple[str, ...]:
        """The metric keys this protocol produces."""
        if self.protocol == "exact":
            return ("accuracy", "closed_accuracy", "open_accuracy")
        base = ("closed_accuracy", "open_recall", "open_precision", "open_f1", "open_em")
        return base + (("open_accuracy",) if self.protocol == "llava_med_batch" else ())

    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        ok, n_errors = scoreable_rows(rows)
        scores: dict[str, dict[str, float]] = {key: {} for key in self.keys}
        n_open = n_closed = 0
        for row in ok:
            rid, kind = row["id"], _answer_type(row)
            pred, gt = str(row.get("prediction") or ""), str(row["answer"])
            n_open += kind == "open"
            n_closed += kind == "closed"
            if self.protocol == "exact":
                hit = exact_hit(pred, gt)
                scores["accuracy"][rid] = hit
                scores[f"{kind}_accuracy"][rid] = hit
                continue
            if kind == "closed":
                rule = closed_hit if self.protocol == "llava_med" else substring_hit
                scores["closed_accuracy"][rid] = rule(pred, gt)
                continue
            recall, precision, f1 = open_scores(pred, gt)
            scores["open_recall"][rid] = recall
            scores["open_precision"][rid] = precision
            scores["open_f1"][rid] = f1
            scores["open_em"][rid] = open_em(pred, gt)
            if self.protocol == "llava_med_batch":
                scores["open_accuracy"][rid] = substring_hit(pred, gt)
        counts = {"n_rows": len(ok) + n_errors, "errors": n_errors, "open": n_open, "closed": n_closed}
        return mean_results(scores, protocol=self.protocol, counts=counts, bootstrap=self.bootstrap,
                            n_resamples=self.n_resamples, seed=self.seed, level=self.level)
