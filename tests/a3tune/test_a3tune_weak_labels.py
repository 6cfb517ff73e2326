"""Weak labels: segment cache, filter, top-K, grid projection vs GT, quality metrics, scorers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medbench.geometry import crop_geometry, pad_geometry
from medbench.methods.a3tune import segmenters as seg
from medbench.methods.a3tune.quality import overlap, pixel_quality, token_quality
from medbench.methods.a3tune.scorers import OracleScorer, RandomScorer
from medbench.methods.a3tune.weak_labels import (
    WeakLabeler,
    gt_labels,
    mask_to_grid,
    select_top_k,
    weak_labels,
)
from medbench.tasks.phantom import PhantomVQA


@pytest.fixture(scope="module")
def samples():
    return PhantomVQA(n_images={"train": 20, "test": 10}).load("test")[:6]


class CountingScorer(RandomScorer):
    calls = 0

    def score(self, crops, text, **kw):
        CountingScorer.calls += 1
        return super().score(crops, text, **kw)


def test_top_k_ties_and_filter():
    assert select_top_k([[3, 5.0], [1, 9.0], [2, 5.0], [0, 1.0]], 3) == [1, 2, 3]
    assert select_top_k([[0, 1.0]], 4) == [0]
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:40, 30:60] = True
    assert seg.keep_segment(seg.from_mask(mask), 100, 100)
    border = np.zeros((100, 100), dtype=bool)
    border[0:40, 30:60] = True  # touches the top edge
    assert not seg.keep_segment(seg.from_mask(border), 100, 100)
    thin = np.zeros((100, 100), dtype=bool)
    thin[20:80, 30:34] = True  # 4 px wide ≤ 4.7 %
    assert not seg.keep_segment(seg.from_mask(thin), 100, 100)


def test_grid_projection_through_geometry():
    mask = np.zeros((256, 256), dtype=bool)
    mask[32:96, 160:192] = True  # → model frame 128 px: rows 16-48, cols 80-96 → cells rows 1-2, col 5
    grid = mask_to_grid(mask, crop_geometry(128, 8), "area50").reshape(8, 8)
    assert sorted(zip(*np.nonzero(grid))) == [(1, 5), (2, 5)]
    wide = np.zeros((100, 200), dtype=bool)  # pad-to-square: the image sits in rows 50-150 of a 200 square
    wide[:, :100] = True
    grid = mask_to_grid(wide, pad_geometry(64, 4), "area50").reshape(4, 4)
    assert grid[1:3, :2].all() and grid.sum() == 4
    assert mask_to_grid(np.zeros((256, 256), dtype=bool), crop_geometry(128, 8), "any").sum() == 0


def test_segments_cache_round_trip(samples):
    labeler = WeakLabeler(seg.Felzenszwalb(), RandomScorer(), progress=False)
    first = labeler.segments(samples[0].image_path)
    again = labeler.segments(samples[0].image_path)
    assert len(first) == len(again) > 1
    assert all(np.array_equal(a.mask, b.mask) and a.bbox_xywh == b.bbox_xywh for a, b in zip(first, again))
    slic = seg.Slic().segment(np.asarray(Image.open(samples[0].image_path).convert("RGB")))
    assert len(slic) > 4


def test_scores_cached_and_resumable(samples):
    labeler = WeakLabeler(seg.Felzenszwalb(), CountingScorer(seed=3), progress=False)
    labeler.score_samples("phantom-vqa", "test", samples[:3])
    calls = CountingScorer.calls
    rows = labeler.score_samples("phantom-vqa", "test", samples)
    assert CountingScorer.calls - calls == 3  # only the three new samples were scored
    assert set(rows) == {s.id for s in samples}
    assert all(r["query"] == s.question for r, s in zip((rows[s.id] for s in samples), samples))
    labeler.score_samples("phantom-vqa", "test", samples)
    assert CountingScorer.calls - calls == 3
    path = labeler.scores_path("phantom-vqa", "test")  # a stale row (other image) is rescored
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace(rows[samples[0].id]["image_sha256"], "0" * 64)
    path.write_text("\n".join(lines) + "\n")
    labeler.score_samples("phantom-vqa", "test", samples)
    assert CountingScorer.calls - calls == 4


def test_weak_label_tokens_vs_gt(samples):
    """Weak labels on the tiny backbone's 8×8 grid vs the GT RoI: token precision/recall/IoU."""
    geometry = crop_geometry(128, 8)
    oracle = WeakLabeler(seg.Felzenszwalb(), OracleScorer(), progress=False)
    weak = weak_labels(oracle, "phantom-vqa", "test", samples, geometry, 4, "area50")
    gt = gt_labels(samples, geometry, "area50")
    assert token_quality(gt, samples, geometry, "area50")["iou"] == pytest.approx(1.0)
    q_oracle = token_quality(weak, samples, geometry, "area50")
    rand = weak_labels(WeakLabeler(seg.Felzenszwalb(), RandomScorer(), progress=False), "phantom-vqa", "test",
                       samples, geometry, 4, "area50")
    q_random = token_quality(rand, samples, geometry, "area50")
    for q in (q_oracle, q_random):
        assert 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1 and 0 <= q["iou"] <= 1 and q["n_gt"] >= 1
    assert q_oracle["iou"] >= q_random["iou"]
    # by hand for one sample: union of its grid segments vs its GT grid
    s = next(s for s in samples if len(weak.grids[s.id]) and len(gt.grids[s.id]))
    p, r, i = overlap(weak.grids[s.id].any(0), gt.grids[s.id][0])
    inter = (weak.grids[s.id].any(0) & gt.grids[s.id][0]).sum()
    assert p == pytest.approx(inter / weak.grids[s.id].any(0).sum()) and r == pytest.approx(inter / gt.grids[s.id][0].sum())
    pix = pixel_quality(oracle, "phantom-vqa", "test", samples, 1)
    assert pix["hit_at_1"] > 0 and pix["n_gt"] == len(samples)


def test_clip_small_trains_and_scores(tmp_path):
    from medbench.methods.a3tune.scorers import ClipSmallScorer, train_clip_small

    folder = train_clip_small(tmp_path / "clip", n_images=2, steps=3, progress=False)
    scorer = ClipSmallScorer(folder)
    crops = [Image.new("RGB", (20, 30), (200, 10, 10)), Image.new("RGB", (40, 10), (0, 0, 250))]
    scores = scorer.score(crops, "Is there a liver in this image?")
    assert scores.shape == (2,) and np.all(np.abs(scores) <= 100.0 + 1e-3)
    assert scorer.fingerprint()["weights"]


def test_optional_backends_fail_clearly(tmp_path):
    from medbench.methods.a3tune.scorers import make_scorer

    with pytest.raises(FileNotFoundError, match="sam_checkpoint"):
        seg.make_segmenter("sam", sam_checkpoint=None)
    with pytest.raises(FileNotFoundError, match="biomedclip_dir"):
        make_scorer("biomedclip", biomedclip_dir=None)
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer("nope")
