"""Weak-label quality against GT RoIs (spec §1.6): precision, recall, IoU and hit@1.

With U the union of the selected segments and G the GT region of a sample: precision |U∩G|/|U|,
recall |U∩G|/|G|, IoU |U∩G|/|U∪G|, in source pixels and on the backbone's token grid; hit@1:
at least half of the top-1 segment lies in G. Means are over the samples with a GT RoI and at
least one selected segment; the unlabelled fraction is reported beside them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from medbench.methods.a3tune.weak_labels import LabelSet, WeakLabeler, grid_segments, select_top_k
from medbench.types import Sample


def overlap(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """(precision, recall, IoU) of two boolean masks; an empty side scores 0."""
    inter = float((pred & gt).sum())
    p_sum, g_sum, union = float(pred.sum()), float(gt.sum()), float((pred | gt).sum())
    return (inter / p_sum if p_sum else 0.0, inter / g_sum if g_sum else 0.0, inter / union if union else 0.0)


def token_quality(labels: LabelSet, samples: list[Sample], geometry: dict[str, Any], rule: str) -> dict[str, Any]:
    """Token-level precision/recall/IoU of the union of each sample's grid segments vs its GT grid."""
    values: list[tuple[float, float, float]] = []
    n_gt = 0
    for s in samples:
        grids = labels.grids.get(s.id)
        if s.roi is None or grids is None:
            continue
        with Image.open(s.image_path) as im:
            width, height = im.size
        gt = grid_segments([s.roi.to_mask(width, height)], geometry, rule)
        if not len(gt):
            continue
        n_gt += 1
        if len(grids):
            values.append(overlap(grids.any(0), gt[0]))
    return _summary(values, n_gt, "token")


def pixel_quality(labeler: WeakLabeler, task_name: str, split: str, samples: list[Sample], top_k: int) -> dict[str, Any]:
    """Pixel-level precision/recall/IoU of the top-K union, and hit@1, from the score cache."""
    rows = labeler.score_samples(task_name, split, samples)
    values, hits = [], []
    n_gt = 0
    for s in samples:
        if s.roi is None:
            continue
        with Image.open(s.image_path) as im:
            width, height = im.size
        gt = s.roi.to_mask(width, height)
        if not gt.any():
            continue
        n_gt += 1
        chosen = select_top_k(rows[s.id]["candidates"], top_k)
        if not chosen:
            continue
        masks = [labeler.segments(s.image_path)[i].mask for i in chosen]
        values.append(overlap(np.any(masks, axis=0), gt))
        top = masks[0]
        hits.append(float((top & gt).sum() >= 0.5 * top.sum()))
    out = _summary(values, n_gt, "pixel")
    out["hit_at_1"] = float(np.mean(hits)) if hits else 0.0
    return out


def _summary(values: list[tuple[float, float, float]], n_gt: int, level: str) -> dict[str, Any]:
    arr = np.array(values, dtype=np.float64).reshape(-1, 3)
    means = arr.mean(0) if len(arr) else np.zeros(3)
    return {"level": level, "precision": float(means[0]), "recall": float(means[1]), "iou": float(means[2]),
            "n": len(values), "n_gt": n_gt, "unlabelled_fraction": 1.0 - len(values) / n_gt if n_gt else 0.0}
