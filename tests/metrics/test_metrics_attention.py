"""Attention metrics: Coverage and Intensity (spec §9) and the raw RoI share (roi_mass, roi_lift,
attention_peak): hand-computed values, reduction properties, guards, upsampling, protocol, results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medbench.metrics.attention import (
    AttentionMetrics,
    attention_protocol,
    coverage_intensity,
    geometry_resolution,
    minmax_normalize,
    roi_share,
    upsample_bilinear,
)

LEGACY_PROTOCOL = "attn-v1:rows=answer,heads=all,layers=all,norm=minmax,upsample=bilinear,tau=0.15"


def test_same_frame_hand_computed() -> None:
    grid = np.array([[0.0, 0.1], [0.5, 1.0]])
    assert coverage_intensity(grid, np.array([[1, 1], [0, 0]])) == (0.0, pytest.approx(0.05))
    cov, inten = coverage_intensity(grid, np.array([[0, 1], [1, 1]], dtype=bool))
    assert cov == pytest.approx(2 / 3) and inten == pytest.approx(1.6 / 3)


def test_minmax_then_threshold_inclusive() -> None:
    grid = np.array([[2.0, 4.0], [6.0, 10.0]])  # scales to [[0, .25], [.5, 1]]
    assert coverage_intensity(grid, np.ones((2, 2), bool)) == (0.75, pytest.approx(0.4375))
    at_tau = np.array([[0.0, 0.15], [0.15, 1.0]])
    assert coverage_intensity(at_tau, np.array([[0, 1], [0, 0]], bool))[0] == 1.0  # M >= tau


def test_upsampled_hand_computed() -> None:
    # Columns of a 2x2 [[0, 1], [0, 1]] grid upsampled to width 4: 0, .25, .75, 1.
    up = upsample_bilinear(np.array([[0.0, 1.0], [0.0, 1.0]]), (4, 4))
    np.testing.assert_allclose(up, np.tile([0.0, 0.25, 0.75, 1.0], (4, 1)))
    assert coverage_intensity(np.array([[0.0, 1.0], [0.0, 1.0]]), np.ones((4, 4), bool)) == (0.75, 0.5)


@pytest.mark.parametrize(
    ("src", "dst"), [((2, 2), (5, 7)), ((16, 16), (336, 336)), ((24, 24), (17, 40)), ((3, 3), (2, 2))]
)
def test_upsampling_matches_torch(src: tuple[int, int], dst: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(0).random(src)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None, None], size=dst, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(upsample_bilinear(grid, dst), ref, rtol=0, atol=1e-12)


def test_identity_size_and_constant_map() -> None:
    grid = np.random.default_rng(1).random((4, 4))
    np.testing.assert_allclose(upsample_bilinear(grid, (4, 4)), grid)
    scaled, constant = minmax_normalize(np.full((3, 3), 0.7))
    assert constant and not scaled.any()
    assert coverage_intensity(np.full((3, 3), 0.7), np.ones((6, 6), bool)) == (0.0, 0.0)


def _row(rid: str, grid, mask, error=None) -> dict:
    return {"id": rid, "attention_grid": grid, "roi_mask": mask, "error": error}


def test_metrics_guards_and_counts() -> None:
    good = np.array([[2.0, 4.0], [6.0, 10.0]])
    full = np.ones((2, 2), bool)
    rows = [
        _row("ok", good, full),
        _row("const", np.zeros((2, 2)), full),
        _row("neg", np.array([[-2.0, 0.0], [2.0, 8.0]]), full),
        _row("nan", np.array([[np.nan, 1.0], [0.0, 1.0]]), full),
        _row("inf", np.array([[np.inf, 1.0], [0.0, 1.0]]), full),
        _row("empty", good, np.zeros((2, 2), bool)),
        _row("noattn", None, full),
        _row("failed", good, full, error="timeout"),
    ]
    out = AttentionMetrics(seed=7).compute(rows)
    cov, inten = out["coverage"], out["intensity"]
    # "neg" min-max scales to [[0, .2], [.4, 1]] like "ok": Coverage/Intensity still score it.
    assert cov.per_sample == {"ok": 0.75, "const": 0.0, "neg": 0.75}
    assert inten.per_sample == {"ok": pytest.approx(0.4375), "const": 0.0, "neg": pytest.approx(0.4)}
    assert cov.value == pytest.approx(1.5 / 3) and inten.value == pytest.approx(0.8375 / 3)
    # The raw-map metrics leave out the zero map ("const") and the negative one ("neg").
    assert out["roi_mass"].per_sample == {"ok": 1.0} and out["roi_lift"].per_sample == {"ok": 1.0}
    assert out["attention_peak"].per_sample == {"ok": pytest.approx(10.0 / 5.5)}
    assert out["roi_mass"].n == 1 and cov.n == 3
    assert cov.counts == out["roi_mass"].counts == {
        "n_rows": 8,
        "errors": 1,
        "missing_attention": 1,
        "missing_roi": 0,
        "nonfinite_attention": 2,
        "empty_roi": 1,
        "constant_map": 1,
        "negative_map": 1,
        "zero_map": 1,
    }
    assert cov.protocol == LEGACY_PROTOCOL
    assert cov.ci["seed"] == 7 and out["roi_lift"].ci is not None


def test_nothing_scoreable_gives_none() -> None:
    out = AttentionMetrics().compute([_row("nan", np.full((2, 2), np.nan), np.ones((2, 2), bool))])
    for key in ("coverage", "intensity", "roi_mass", "roi_lift", "attention_peak"):
        assert out[key].value is None and out[key].ci is None and out[key].n == 0
    zero = AttentionMetrics().compute([_row("z", np.zeros((2, 2)), np.ones((2, 2), bool))])
    assert zero["coverage"].value == 0.0 and zero["roi_mass"].value is None


def test_protocol_variants_and_bad_input() -> None:
    assert attention_protocol(rows="post_image", heads="top8", tau=0.2).endswith(
        "rows=post_image,heads=top8,layers=all,norm=minmax,upsample=bilinear,tau=0.2"
    )
    with pytest.raises(ValueError, match="2-D"):
        AttentionMetrics().compute([_row("a", np.ones(4), np.ones((2, 2), bool))])
    with pytest.raises(ValueError, match="empty"):
        coverage_intensity(np.ones((2, 2)), np.zeros((2, 2)))


# ---- raw RoI share: roi_mass, roi_lift, attention_peak ---------------------------------------------
# Bilinear 2 -> 4 (align_corners=False) puts these weights of source rows (0, 1) on output rows
# 0..3: (1, 0), (.75, .25), (.25, .75), (0, 1); the same along columns.
ROW_WEIGHTS_2_TO_4 = ((1.0, 0.0), (0.75, 0.25), (0.25, 0.75), (0.0, 1.0))


def test_roi_share_hand_computed_on_an_upsampled_grid() -> None:
    grid = np.array([[4.0, 2.0], [1.0, 1.0]])
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # the top-left quarter of the 4x4 frame
    # Weight each source row (column) puts on output rows (columns) 0-1: 1 + .75 and 0 + .25;
    # on all four output rows: 2 each.
    w_in, w_all = (1.75, 0.25), (2.0, 2.0)
    inside = sum(grid[r, c] * w_in[r] * w_in[c] for r in range(2) for c in range(2))
    total = sum(grid[r, c] * w_all[r] * w_all[c] for r in range(2) for c in range(2))
    assert (inside, total) == (13.625, 32.0)
    share = roi_share(grid, mask)
    assert share.roi_mass == pytest.approx(13.625 / 32.0)  # 0.42578125; 0.5 without the upsampling
    assert share.roi_lift == pytest.approx((13.625 / 32.0) / (4 / 16))
    assert share.attention_peak == pytest.approx(4.0 / 2.0)  # max 4, mean 8/4
    np.testing.assert_allclose(
        upsample_bilinear(grid, (4, 4)),
        [[sum(grid[r, c] * ROW_WEIGHTS_2_TO_4[i][r] * ROW_WEIGHTS_2_TO_4[j][c] for r in range(2) for c in range(2))
          for j in range(4)] for i in range(4)],
    )


def test_uniform_map_gives_the_area_fraction_and_lift_one() -> None:
    mask = np.zeros((4, 6), bool)
    mask[1:3, 0:3] = True  # 6 of 24 pixels
    share = roi_share(np.ones((3, 3)), mask)
    assert share == (0.25, 1.0, 1.0)  # exactly: roi_mass = area fraction, roi_lift = peak = 1
    other = roi_share(np.full((3, 3), 0.37), mask)
    assert other == pytest.approx((0.25, 1.0, 1.0), abs=1e-12)


def test_map_concentrated_inside_the_roi() -> None:
    grid = np.array([[1.0, 0.0], [0.0, 0.0]])
    # Upsampled to 4x4 the single cell reaches output rows/columns 0-2 (weights 1, .75, .25).
    support = np.zeros((4, 4), bool)
    support[:3, :3] = True
    share = roi_share(grid, support)
    assert share.roi_mass == 1.0
    assert share.roi_lift == pytest.approx(16 / 9)
    assert share.attention_peak == pytest.approx(1.0 / 0.25)
    outside = roi_share(grid, ~support)
    assert outside.roi_mass == 0.0 and outside.roi_lift == 0.0


def test_scaling_the_map_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    grid = rng.random((4, 4))
    mask = np.zeros((8, 8), bool)
    mask[2:5, 1:6] = True
    for factor in (7.3, 1e-4):
        np.testing.assert_allclose(roi_share(grid * factor, mask), roi_share(grid, mask), rtol=1e-12)
        np.testing.assert_allclose(coverage_intensity(grid * factor, mask), coverage_intensity(grid, mask),
                                   rtol=1e-12)


def test_sharpening_raises_roi_mass_and_peak_while_coverage_falls() -> None:
    """The README's worked example: m -> m**3 keeps the ranking of the cells."""
    grid = np.array([[0.4, 0.3], [0.2, 0.1]])
    mask = np.array([[1, 0], [1, 0]], bool)  # the left column, same frame (no upsampling)
    sharp = grid**3  # [[.064, .027], [.008, .001]], sum .1
    assert (np.argsort(sharp, axis=None) == np.argsort(grid, axis=None)).all()
    before, after = roi_share(grid, mask), roi_share(sharp, mask)
    assert before == pytest.approx((0.6 / 1.0, 0.6 / 0.5, 0.4 / 0.25))
    assert after == pytest.approx((0.072 / 0.1, 0.72 / 0.5, 0.064 / 0.025))
    # Min-max: the RoI holds 1 and (.2 - .1)/.3 = .333 before, 1 and (.008 - .001)/.063 = .111 after.
    assert coverage_intensity(grid, mask) == (1.0, pytest.approx((1 + 1 / 3) / 2))
    assert coverage_intensity(sharp, mask) == (0.5, pytest.approx((1 + 7 / 63) / 2))


def test_roi_share_refuses_negative_and_zero_maps() -> None:
    with pytest.raises(ValueError, match="negative_map"):
        roi_share(np.array([[-0.1, 1.0], [0.0, 1.0]]), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="zero_map"):
        roi_share(np.zeros((2, 2)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="empty"):
        roi_share(np.ones((2, 2)), np.zeros((2, 2), bool))


def test_protocol_records_the_resolution() -> None:
    assert attention_protocol() == LEGACY_PROTOCOL  # what run fingerprints hash: unchanged
    metric = AttentionMetrics(grid=2, frame=(4, 6))
    assert metric.protocol == LEGACY_PROTOCOL + ",grid=2x2,frame=4x6"
    with pytest.raises(ValueError, match="protocol's frame"):
        metric.compute([_row("a", np.ones((2, 2)), np.ones((4, 4), bool))])
    with pytest.raises(ValueError, match="protocol's"):
        metric.compute([_row("a", np.ones((3, 3)), np.ones((4, 6), bool))])
    crop = {"mode": "resize_shortest+center_crop", "shortest_edge": 224, "crop": [224, 224], "grid_size": 16}
    pad = {"mode": "pad_square+resize", "size": 336, "grid_size": 24, "fill_rgb": [0, 0, 0], "fill_l": None}
    assert geometry_resolution(crop) == {"grid": 16, "frame": (224, 224)}
    assert attention_protocol(**geometry_resolution(pad)).endswith(",tau=0.15,grid=24x24,frame=336x336")


# ---- results.json of a VQA run ----------------------------------------------------------------------
GEOMETRY = {"mode": "resize_shortest+center_crop", "shortest_edge": 128, "crop": [128, 128], "grid_size": 8}


def _old_run(root: Path, task, grids: dict[str, list[float]]) -> Path:
    """A run directory as an earlier medbench wrote it (protocol without the resolution)."""
    run = root / "run"
    run.mkdir(parents=True)
    config = {"task": task.name, "limit": None, "data_root": None, "model": "tiny", "seed": 0}
    (run / "run.json").write_text(json.dumps({
        "fingerprint": "fp", "config": config, "tuning": "none", "decoding": "greedy", "method_args": {},
        "geometry": GEOMETRY, "attention_protocol": LEGACY_PROTOCOL}))
    lines = [json.dumps({"header": True, "fingerprint": "fp"})]
    for sample in task.load("test"):
        attention = {"grid_size": 8, "grid": grids[sample.id], "image_size": [256, 256]}
        lines.append(json.dumps({"id": sample.id, "prediction": sample.answer, "answer": sample.answer,
                                 "answer_type": sample.answer_type.value, "attention": attention}))
    (run / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_results_json_carries_the_raw_share_with_cis(tmp_path, monkeypatch) -> None:
    from medbench.scoring import score_run
    from medbench.tasks.phantom import PhantomVQA

    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / "cache"))
    task = PhantomVQA(n_images={"test": 2})
    samples = task.load("test")
    rng = np.random.default_rng(5)
    grids = {s.id: rng.random(64).tolist() for s in samples}
    flat = samples[0].id
    grids[flat] = [0.5] * 64  # a uniform map: roi_lift 1, peak 1
    run = _old_run(tmp_path, task, grids)
    results = score_run(run, task=task, samples=samples)
    assert json.loads((run / "results.json").read_text())["metrics"] == results["metrics"]
    assert results["attention_protocol"] == LEGACY_PROTOCOL + ",grid=8x8,frame=128x128"
    for key in ("coverage", "intensity", "roi_mass", "roi_lift", "attention_peak"):
        ci = results["confidence_intervals"][key]
        assert ci["low"] <= results["metrics"][key] <= ci["high"], key
    per_sample = json.loads((run / "per_sample.json").read_text())
    assert per_sample["roi_lift"][flat] == pytest.approx(1.0, abs=1e-12)
    assert per_sample["attention_peak"][flat] == pytest.approx(1.0, abs=1e-12)
    assert len(per_sample["roi_mass"]) == len(samples)
    assert results["counts"]["attention_negative_map"] == results["counts"]["attention_zero_map"] == 0
