"""A³TUNE head selection (Eq. 8–9), alignment loss (Eq. 10) and span detection on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from medbench.methods.a3tune.align import alignment_loss, refined_rows, select_heads, visual_ratio
from medbench.methods.a3tune.context import compute_spans
from medbench.methods.a3tune.params import A3TuneParams, resolve, resolve_heads


def _loss(rows, segs, **kw):
    b, q, _ = rows.shape
    return alignment_loss(rows, torch.ones(b, q, dtype=torch.bool), segs, torch.ones(segs.shape[:2], dtype=torch.bool), **kw)


def test_visual_ratio_and_top_r_on_hand_made_attention():
    probs = torch.zeros(1, 4, 2, 3)  # 4 heads, 2 rows, 3 image keys; the rest of each row is text
    probs[0, 0] = torch.tensor([[0.1, 0.1, 0.0], [0.1, 0.1, 0.0]])  # ratio 0.2
    probs[0, 1] = torch.tensor([[0.3, 0.3, 0.3], [0.1, 0.0, 0.0]])  # ratio (0.9 + 0.1) / 2 = 0.5
    probs[0, 2] = torch.tensor([[0.0, 0.0, 0.7], [0.0, 0.0, 0.7]])  # ratio 0.7
    probs[0, 3] = torch.tensor([[0.25, 0.25, 0.0], [0.0, 0.0, 0.0]])  # ratio 0.25
    rows = torch.tensor([[True, True]])
    ratio = visual_ratio(probs, rows)
    assert torch.allclose(ratio, torch.tensor([[0.2, 0.5, 0.7, 0.25]]))
    assert select_heads(ratio, 2).tolist() == [[2, 1]]
    # a masked row does not count: head 3 becomes 0.25 on its only real row
    assert math.isclose(float(visual_ratio(probs, torch.tensor([[True, False]]))[0, 3]), 0.5)
    tie = select_heads(torch.tensor([[0.5, 0.5, 0.1]]), 1)
    assert tie.tolist() == [[0]]  # ties go to the lower head index
    mean = refined_rows(probs, torch.tensor([[2, 1]]))
    assert torch.allclose(mean[0, 0], torch.tensor([0.15, 0.15, 0.5]))


def test_alignment_loss_hand_computed():
    rows = torch.tensor([[[0.2, 0.2, 0.0, 0.0]]])  # all image attention in tokens 0-1
    inside = torch.tensor([[[True, True, False, False]]])
    outside = torch.tensor([[[False, False, True, True]]])
    assert float(_loss(rows, inside)) == pytest.approx(0.0)
    assert float(_loss(rows, outside)) == pytest.approx(1.0)
    both = torch.cat([inside, outside], 1)
    assert float(_loss(rows, both)) == pytest.approx(1.0)
    assert float(_loss(rows, both, norm="mean")) == pytest.approx(0.5)
    # K disjoint equal-mass segments: (K − 1)² / K
    k = 4
    uniform = torch.full((1, 1, k), 0.1)
    segs = torch.eye(k, dtype=torch.bool)[None]
    assert float(_loss(uniform, segs)) == pytest.approx((k - 1) ** 2 / k)
    # f_s = 0.3 / 0.5 → (1 − 0.6)² = 0.16 (Eq. 10 by hand)
    rows2 = torch.tensor([[[0.3, 0.1, 0.1, 0.0]]])
    assert float(_loss(rows2, torch.tensor([[[True, False, False, False]]]))) == pytest.approx(0.16)


def test_per_row_equals_mean_map_for_identical_rows_and_bounds():
    torch.manual_seed(0)
    row = torch.rand(1, 1, 6)
    rows = row.expand(1, 3, 6).clone()
    segs = torch.rand(1, 3, 6) > 0.5
    segs[0, :, 0] = True
    a = _loss(rows, segs, reduce="mean_map")
    b = _loss(rows, segs, reduce="per_row")
    assert torch.allclose(a, b)
    random_rows = torch.rand(2, 5, 6)
    loss = _loss(random_rows, torch.rand(2, 3, 6) > 0.3)
    assert bool(((loss >= 0) & (loss <= 3)).all())


def test_kl_variant_and_masks():
    rows = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    seg = torch.tensor([[[True, True, False, False]]])
    assert float(_loss(rows, seg, kind="kl")) == pytest.approx(0.0, abs=1e-5)
    rows = torch.tensor([[[0.25, 0.25, 0.25, 0.25]]])
    # KL(Q‖P) with Q uniform on 2 tokens, P uniform on 4: log 2
    assert float(_loss(rows, seg, kind="kl")) == pytest.approx(math.log(2), abs=1e-5)
    # samples without rows or segments add 0
    loss = alignment_loss(rows, torch.zeros(1, 1, dtype=torch.bool), seg, torch.ones(1, 1, dtype=torch.bool))
    assert float(loss) == 0.0
    loss = alignment_loss(rows, torch.ones(1, 1, dtype=torch.bool), seg, torch.zeros(1, 1, dtype=torch.bool))
    assert float(loss) == 0.0


def test_gradient_flows_only_through_selected_heads():
    probs = torch.rand(1, 3, 2, 4, requires_grad=True)
    rows = refined_rows(probs, torch.tensor([[1]]))
    _loss(rows, torch.tensor([[[True, False, False, False]]])).sum().backward()
    assert probs.grad[0, 0].abs().sum() == 0 and probs.grad[0, 2].abs().sum() == 0
    assert probs.grad[0, 1].abs().sum() > 0


def test_spans_left_and_right_padding():
    img, pad = 9, 0
    suffix = [7, 8]
    right = torch.tensor([[1, img, img, 4, 5, 7, 8, 20, 21, pad, pad]])
    left = torch.tensor([[pad, pad, 1, img, img, 4, 5, 7, 8]])
    for ids in (right, left):
        mask = (ids != pad).long()
        spans = compute_spans(ids, mask, img, suffix)
        start = int(spans.last_image[0]) + 1
        assert spans.prompt_mask[0].nonzero()[:, 0].tolist() == list(range(start, start + 4))
        assert int(spans.image_mask.sum()) == 2
    spans = compute_spans(right, (right != pad).long(), img, suffix)
    pos, valid = spans.rows("post_image")
    assert pos[0][valid[0]].tolist() == [3, 4, 5, 6, 7, 8]
    pos, valid = spans.rows("answer")
    assert pos[0][valid[0]].tolist() == [6, 7]  # the rows predicting the answer tokens 20, 21


def test_head_count_defaults_and_clamp():
    assert resolve_heads(None, 1024) == 128  # paper: R = 128 of 32×32 heads
    assert resolve_heads(None, 32) == 4  # tiny-med-llava: 4×8 heads
    assert resolve_heads(128, 32) == 32  # clamped, never a crash
    assert resolve_heads(0.25, 32) == 8
    assert resolve_heads(0, 32) == 0

    class Slake:
        name = "slake"

    res = resolve(A3TuneParams(), Slake(), 32, 32)
    assert (res.lam, res.top_k, res.qmoe_experts, res.kmoe_experts, res.kmoe_top_b, res.top_heads) == (
        0.1, 4, 8, 16, 3, 128)
    ref = resolve(A3TuneParams(preset="ref"), Slake(), 32, 32)
    assert (ref.lam, ref.top_k, ref.kmoe_top_b) == (0.03, 8, 1)
