"""Weak-label quality (spec §1.6) travels from A³TUNE training into the run's results and summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medbench.methods.a3tune import A3Tune
from medbench.methods.a3tune.weak_labels import grid_segments
from medbench.scoring import training_label_quality
from medbench.summary import summary_table
from medbench.tasks.phantom import PhantomVQA


def test_weak_label_quality_reaches_results(random_backbone, tmp_path):
    task = PhantomVQA(n_images={"train": 6, "test": 2})
    method = A3Tune(batch_size=2, epochs=1, train_limit=4, labels="weak", segmenter="felzenszwalb", scorer="random",
                    lam=0.5, top_k=2)
    out = method.train(random_backbone, task, tmp_path / "ckpt", 0, "cpu")
    quality = training_label_quality(str(out), task.train_split)
    assert quality is not None and quality["source"] == "weak" and quality["split"] == task.train_split

    # the same numbers by hand: union of each sample's grid segments vs its GT RoI on the grid
    samples = task.load(task.train_split)[:4]
    res = method.resolved(random_backbone, task)
    labels = method.build_labels(random_backbone, task, samples, res, progress=False)
    geometry = random_backbone.geometry()
    per_sample, n_gt = [], 0
    for s in samples:
        with Image.open(s.image_path) as im:
            gt_grid = grid_segments([s.roi.to_mask(*im.size)], geometry, method.params.grid_rule)
        if not len(gt_grid):  # an empty RoI has no token
            continue
        gt, n_gt = gt_grid[0], n_gt + 1
        union = labels.grids[s.id].any(0)
        if not union.any():
            continue
        inter = (union & gt).sum()
        per_sample.append((inter / union.sum(), inter / gt.sum(), inter / (union | gt).sum()))
    expected = np.mean(per_sample, axis=0)
    assert quality["n_gt"] == n_gt > 0 and quality["n"] == len(per_sample) > 0
    assert (quality["precision"], quality["recall"], quality["iou"]) == pytest.approx(tuple(expected))
    assert quality["unlabelled_fraction"] == pytest.approx(1 - len(per_sample) / n_gt)

    results = {"model": "m", "task": task.name, "tuning": "a3tune", "decoding": "greedy", "metrics": {},
               "counts": {}, "run_dir": "d", "weak_label_quality": quality}
    text = summary_table(results)
    assert f"IoU {quality['iou']:.3f}" in text and "weak labels vs GT RoIs" in text


def test_no_quality_without_gt_or_checkpoint(tmp_path):
    assert training_label_quality(None, "train") is None
    assert training_label_quality(str(tmp_path), "train") is None  # no training.json
    (tmp_path / "training.json").write_text(json.dumps({"losses": [1.0]}))  # e.g. a LoRA adapter
    assert training_label_quality(str(tmp_path), "train") is None
    (tmp_path / "training.json").write_text(json.dumps({"weak_label_quality": {"n_gt": 0, "n": 0}}))
    assert training_label_quality(str(tmp_path), "train") is None  # a task without GT RoIs
