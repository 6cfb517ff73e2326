"""Prompt-aware weak labels (§4.1, Eq. 3): segment → filter → crop and score against the query →
top-K → projection onto the backbone's visual-token grid through its own preprocessing geometry.

Caches (under ``$MEDBENCH_CACHE/weak_labels``, written atomically, resumable):

- segments per image (backbone-independent): ``segments/<seg_fp>/<sha[:2]>/<sha>.npz``;
- scores per (task, split, label fingerprint): ``<task>/<split>/<label_fp>.jsonl``, one row per
  sample ``{sample_id, image_sha256, query, candidates: [[seg_idx, score], …]}`` for every
  candidate that passes the filter, so K is applied at load time; grid masks are built per
  backbone at load time. Changing K, ``grid_rule`` or the backbone re-runs neither stage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medbench.console import progress_bars_enabled
from medbench.geometry import GRID_RULES, frame_to_grid, mask_to_grid  # noqa: F401 - re-exported
from medbench.hashing import sha256_file, sha256_obj, sha256_text
from medbench.images import open_image
from medbench.methods.a3tune import segmenters as seg
from medbench.methods.a3tune.tiny_clip import crop_segment
from medbench.paths import cache_dir
from medbench.types import Sample

log = logging.getLogger("medbench")

FILTER_FP = {"min_region": seg.MIN_REGION, "max_area": seg.MAX_AREA, "min_side": seg.MIN_SIDE,
             "max_edge": seg.MAX_EDGE, "v": 1}
FLUSH_EVERY = 64


def auto_backends(task: Any, segmenter: str, scorer: str) -> tuple[str, str]:
    """``auto``: SAM + BiomedCLIP for real datasets (paper), felzenszwalb + clip_small for embedded ones."""
    embedded = bool(getattr(task, "embedded", False))
    return (segmenter if segmenter != "auto" else ("felzenszwalb" if embedded else "sam"),
            scorer if scorer != "auto" else ("clip_small" if embedded else "biomedclip"))


def ref_query(task_name: str, sample: Sample) -> str:
    """The reference's query templates verbatim (typo "imgaing" included; spec §1.2)."""
    q = sample.question
    if task_name in ("slake", "vqa-rad"):
        where = str(sample.meta.get("location" if task_name == "slake" else "organ") or "")
        low = where.lower()
        if low == "chest":
            return f"Medical image of {where} and lungs. " + q
        if low in ("abdomen", "abd"):
            return ("Medical imgaing of abdomen." if task_name == "slake" else "Medical imgaing of abdomen CT.") + q
        return f"Medical image of {where}." + q
    if task_name == "pathvqa":
        return "Medical image of pathology." + q
    if task_name in ("iu-xray-report", "mimic-cxr-report"):
        return "Medical image of lungs and chest X-ray."
    return q


class WeakLabeler:
    """Runs and caches the segment and score stages for one (segmenter, scorer, query) choice."""

    def __init__(self, segmenter: Any, scorer: Any, query: str = "prompt", progress: bool = True):
        self.segmenter, self.scorer, self.query, self.progress = segmenter, scorer, query, progress
        self.seg_fp = sha256_obj(segmenter.fingerprint())[:16]
        self.label_fp = sha256_obj({"seg": segmenter.fingerprint(), "scorer": scorer.fingerprint(),
                                    "filter": FILTER_FP, "query": query})[:16]
        self._sha: dict[str, str] = {}

    def image_sha(self, path: str) -> str:
        if path not in self._sha:
            self._sha[path] = sha256_file(path)
        return self._sha[path]

    def segments(self, image_path: str) -> list[seg.Segment]:
        """Raw proposals of one image (cached by image sha256 and segmenter fingerprint)."""
        sha = self.image_sha(image_path)
        path = cache_dir("weak_labels", "segments", self.seg_fp, sha[:2]) / f"{sha}.npz"
        if path.exists():
            try:
                return seg.load_segments(path)
            except Exception:  # a damaged cache file is rebuilt
                log.warning("rebuilding damaged segment cache %s", path)
        rgb = np.asarray(open_image(image_path))
        found = self.segmenter.segment(rgb)
        seg.save_segments(path, found, rgb.shape[:2])
        return found

    def query_text(self, task_name: str, sample: Sample) -> str:
        return ref_query(task_name, sample) if self.query == "ref" else sample.question.replace("<image>", "").strip()

    def scores_path(self, task_name: str, split: str) -> Path:
        return cache_dir("weak_labels", task_name, split) / f"{self.label_fp}.jsonl"

    def score_samples(self, task_name: str, split: str, samples: list[Sample]) -> dict[str, dict[str, Any]]:
        """Candidate scores of every sample; rows already in the cache are reused (resumable)."""
        from tqdm.auto import tqdm

        from medbench.atomic import atomic_write_text

        path = self.scores_path(task_name, split)
        rows = read_rows(path)
        todo = [s for s in samples if not self.is_current(rows.get(s.id), task_name, s)]
        bar = tqdm(total=len(todo), desc=f"weak labels {task_name}/{split}", unit="sample",
                   disable=not (self.progress and progress_bars_enabled()))
        for n, sample in enumerate(todo, 1):
            rows[sample.id] = self.score_one(task_name, sample)
            bar.update(1)
            if n % FLUSH_EVERY == 0 or n == len(todo):
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows.values()))
        bar.close()
        return rows

    def is_current(self, row: dict[str, Any] | None, task_name: str, sample: Sample) -> bool:
        """A cached row still matches the sample's image and query (else it is rescored)."""
        return (row is not None and row.get("image_sha256") == self.image_sha(sample.image_path)
                and row.get("query_sha256") == sha256_text(self.query_text(task_name, sample)))

    def score_one(self, task_name: str, sample: Sample) -> dict[str, Any]:
        rgb = np.asarray(open_image(sample.image_path))
        height, width = rgb.shape[:2]
        proposals = self.segments(sample.image_path)
        kept = [i for i, s in enumerate(proposals) if seg.keep_segment(s, width, height)]
        query = self.query_text(task_name, sample)
        extra: dict[str, Any] = {}
        if getattr(self.scorer, "needs_gt", False):
            if sample.roi is None:
                raise ValueError(f"scorer {self.scorer.name} needs a GT RoI; sample {sample.id} has none")
            extra = {"masks": [proposals[i].mask for i in kept], "gt": sample.roi.to_mask(width, height)}
        crops = [crop_segment(rgb, proposals[i].mask) for i in kept]
        scores = self.scorer.score(crops, query, **extra) if kept else np.zeros(0)
        return {"sample_id": sample.id, "image_sha256": self.image_sha(sample.image_path), "query": query,
                "query_sha256": sha256_text(query), "candidates": [[i, round(float(v), 5)] for i, v in zip(kept, scores)]}


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["sample_id"]] = row
    return rows


def select_top_k(candidates: list[list[float]], k: int) -> list[int]:
    """Segment indices of the K highest scores (Eq. 3's τ_K); ties go to the lower index."""
    ranked = sorted(candidates, key=lambda c: (-c[1], c[0]))
    return [int(c[0]) for c in ranked[:k]]


def grid_segments(masks: list[np.ndarray], geometry: dict[str, Any], rule: str) -> np.ndarray:
    """[K', N] bool: the masks on the grid, dropping those empty there."""
    n = int(geometry["grid_size"]) ** 2
    rows = [g for g in (mask_to_grid(m, geometry, rule) for m in masks) if g.any()]
    return np.stack(rows) if rows else np.zeros((0, n), dtype=bool)


@dataclass
class LabelSet:
    """Per-sample grid segments [K_b, N] plus the counts a run reports."""

    grids: dict[str, np.ndarray]
    source: str
    label_fp: str | None = None

    @property
    def unlabelled(self) -> int:
        return sum(1 for g in self.grids.values() if len(g) == 0)

    def summary(self) -> dict[str, Any]:
        sizes = [len(g) for g in self.grids.values()]
        return {"source": self.source, "label_fp": self.label_fp, "n": len(sizes), "unlabelled": self.unlabelled,
                "mean_segments": float(np.mean(sizes)) if sizes else 0.0}


def gt_labels(samples: list[Sample], geometry: dict[str, Any], rule: str) -> LabelSet:
    """The task's GT RoI as a single segment (label source ``gt``)."""
    grids = {}
    for s in samples:
        if s.roi is None:
            grids[s.id] = np.zeros((0, int(geometry["grid_size"]) ** 2), dtype=bool)
            continue
        with Image.open(s.image_path) as im:
            width, height = im.size
        grids[s.id] = grid_segments([s.roi.to_mask(width, height)], geometry, rule)
    return LabelSet(grids, "gt")


def weak_labels(labeler: WeakLabeler, task_name: str, split: str, samples: list[Sample], geometry: dict[str, Any],
                top_k: int, rule: str) -> LabelSet:
    """Top-K prompt-aware segments of every sample on the backbone's grid."""
    rows = labeler.score_samples(task_name, split, samples)
    grids = {}
    for s in samples:
        chosen = select_top_k(rows[s.id]["candidates"], top_k)
        proposals = labeler.segments(s.image_path) if chosen else []
        grids[s.id] = grid_segments([proposals[i].mask for i in chosen], geometry, rule)
    return LabelSet(grids, "weak", labeler.label_fp)


def moved_segment(segment: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """``segment`` [G·G] translated to a uniformly drawn place where its bounding box fits whole:
    the same shape and size, somewhere else (possibly where it was)."""
    cells = segment.reshape(grid, grid)
    rows, cols = np.nonzero(cells)
    if rows.size == 0:
        return segment.copy()
    box = cells[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    top = int(rng.integers(0, grid - box.shape[0] + 1))
    left = int(rng.integers(0, grid - box.shape[1] + 1))
    out = np.zeros((grid, grid), dtype=bool)
    out[top:top + box.shape[0], left:left + box.shape[1]] = box
    return out.reshape(-1)


def random_labels(weak: LabelSet, grid: int, seed: int) -> LabelSet:
    """Label source ``random``: each sample's weak segments, each moved to a random place on the grid
    (:func:`moved_segment`; same count, shapes and sizes), drawn from ``seed`` and the sample id."""
    from medbench.hashing import sha256_text

    grids = {}
    for sample_id, segments in weak.grids.items():
        rng = np.random.default_rng([seed, int(sha256_text(sample_id)[:12], 16)])
        grids[sample_id] = np.stack([moved_segment(s, grid, rng) for s in segments]) if len(segments) else segments
    return LabelSet(grids, "random", weak.label_fp)
