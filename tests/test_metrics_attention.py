"""Coverage and Intensity (spec §9): hand-computed values, guards, upsampling."""

from __future__ import annotations

import numpy as np
import pytest

from medbench.metrics.attention import (
    AttentionMetrics,
    attention_protocol,
    coverage_intensity,
    minmax_normalize,
    upsample_bilinear,
)


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
        _row("nan", np.array([[np.nan, 1.0], [0.0, 1.0]]), full),
        _row("inf", np.array([[np.inf, 1.0], [0.0, 1.0]]), full),
        _row("empty", good, np.zeros((2, 2), bool)),
        _row("noattn", None, full),
        _row("failed", good, full, error="timeout"),
    ]
    out = AttentionMetrics(seed=7).compute(rows)
    cov, inten = out["coverage"], out["intensity"]
    assert cov.per_sample == {"ok": 0.75, "const": 0.0}
    assert inten.per_sample == {"ok": pytest.approx(0.4375), "const": 0.0}
    assert cov.value == pytest.approx(0.375) and inten.value == pytest.approx(0.21875)
    assert cov.counts == {
        "n_rows": 7,
        "errors": 1,
        "missing_attention": 1,
        "missing_roi": 0,
        "nonfinite_attention": 2,
        "empty_roi": 1,
        "constant_map": 1,
    }
    assert cov.protocol == "attn-v1:rows=answer,heads=all,layers=all,norm=minmax,upsample=bilinear,tau=0.15"
    assert cov.ci["seed"] == 7


def test_nothing_scoreable_gives_none() -> None:
    out = AttentionMetrics().compute([_row("nan", np.full((2, 2), np.nan), np.ones((2, 2), bool))])
    assert out["coverage"].value is None and out["coverage"].ci is None and out["coverage"].n == 0


def test_protocol_variants_and_bad_input() -> None:
    assert attention_protocol(rows="post_image", heads="top8", tau=0.2).endswith(
        "rows=post_image,heads=top8,layers=all,norm=minmax,upsample=bilinear,tau=0.2"
    )
    with pytest.raises(ValueError, match="2-D"):
        AttentionMetrics().compute([_row("a", np.ones(4), np.ones((2, 2), bool))])
    with pytest.raises(ValueError, match="empty"):
        coverage_intensity(np.ones((2, 2)), np.zeros((2, 2)))
