"""The result schema: what ``predictions.jsonl`` rows and ``results.json`` hold.

Every file carries ``schema_version``. Metric values are fractions in [0, 1] (CIDEr on its
native 0–10 scale); tables render VQA and report metrics ×100 and attention as fractions.
"""

from __future__ import annotations

from typing import Any, TypedDict

SCHEMA_VERSION = 1


class ConfidenceInterval(TypedDict):
    low: float | None
    high: float | None
    level: float
    method: str
    n_resamples: int
    seed: int


class PredictionRow(TypedDict, total=False):
    id: str
    """Sample id, unique within the task."""
    prompt_hash: str
    """First 16 hex digits of sha256 of the rendered prompt text."""
    prediction: str
    """Decoded answer (may be empty: an empty answer is a valid, scored prediction)."""
    answer: str
    """Reference answer or report."""
    answer_type: str
    """``open`` | ``closed`` | ``report``."""
    seed: int
    """Per-sample seed derived from (run seed, task, sample id)."""
    num_tokens: int
    """Number of generated tokens (EOS excluded)."""
    error: str | None
    """Set when decoding this sample failed; error rows are retried on resume, never scored."""
    attention: dict[str, Any] | None
    """``{"grid": G×G floats row-major, "grid_size": G}``: mean visual attention of the answer."""
    guards: int
    """Decoding steps at which NaN/inf scores were replaced by the main branch's logits."""


class Results(TypedDict, total=False):
    schema_version: int
    task: str
    task_version: str
    model: str
    tuning: str
    """``none`` | ``lora`` | ``a3tune``."""
    decoding: str
    method_args: dict[str, Any]
    """Resolved hyperparameters: ``{"decoding": {...}, "tuning": {...}}``."""
    metric_protocol: str
    """VQA: ``llava_med``; reports: ``coco``; attention metrics record ``attention_protocol``."""
    attention_protocol: str | None
    metrics: dict[str, float | None]
    """closed_accuracy, open_recall, open_precision, open_f1, open_em, coverage, intensity, or
    bleu1..bleu4, rouge_l, meteor, cider. None where no sample was scorable."""
    confidence_intervals: dict[str, ConfidenceInterval | None]
    counts: dict[str, int]
    """planned, scored, failed, closed, open, report, with_attention, attention_excluded,
    guard_steps, skipped_records."""
    skipped: list[dict[str, str]]
    """Records the task loader refused, with reasons."""
    unavailable: dict[str, str]
    """Report tasks: optional metric families that could not run (bertscore, clinical, coco) → reason."""
    metric_details: dict[str, Any]
    """Report tasks: per family protocol, versions, model hash/layer and ``comparable`` flag."""
    data: dict[str, Any]
    """Dataset provenance from the loader: source format, split origin, count checks."""
    limit: int | None
    """``--limit`` of the run; a limited run never fills a paper-table cell silently."""
    split: str
    """The split decoded: the task's test split unless ``--split`` chose another (``val``); tables
    leave runs on other splits out, with a warning naming them."""
    fingerprint: str
    seed: int
    versions: dict[str, str]
    git: dict[str, Any]
    timing: dict[str, Any]
    weak_label_quality: dict[str, Any]
    """Tuning runs whose training labels have GT RoIs (A³TUNE): token-level ``precision``,
    ``recall``, ``iou`` of each sample's label union vs its GT grid, ``n``, ``n_gt``,
    ``unlabelled_fraction``, the training ``split`` and label ``source`` (``weak`` | ``gt``)."""
    run_dir: str
