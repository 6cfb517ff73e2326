"""ControlMLLM: RoI refusal, reductions to greedy, loop arithmetic, batching and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decoding_fixtures import SEEDS, encode, samples, select_rows, shared_backbone, tiny_backbone

from medbench.engine import encode_images
from medbench.method import MethodArgsError
from medbench.methods.controlmllm import ControlMLLM, MissingRoIError, energy, roi_grid
from medbench.methods.greedy import Greedy
from medbench.types import RoI


@pytest.fixture(scope="module")
def setup():
    backbone = shared_backbone()
    ss, images, batch = encode(backbone, 3, roi=True)
    return backbone, ss, images, batch


def test_refuses_samples_without_roi(setup):
    backbone, _, images, batch = setup
    method = ControlMLLM()
    plain = samples(3, roi=False)
    with pytest.raises(MissingRoIError, match="region of interest") as err:
        method.check_samples(plain)
    assert isinstance(err.value, MethodArgsError)
    with pytest.raises(MissingRoIError):
        method.prepare(backbone, plain, images)
    with pytest.raises(MissingRoIError, match="prepare"):
        ControlMLLM().generate(backbone, batch, SEEDS, 2)


@pytest.mark.parametrize("args", [{"steps": 0}, {"lr": 0.0}, {"alpha": 0.0}], ids=["T0", "lr0", "alpha0"])
def test_reductions_to_greedy(setup, args):
    backbone, ss, images, batch = setup
    method = ControlMLLM(**{**args, "steps": args.get("steps", 2)})
    method.prepare(backbone, ss, images)
    assert method.generate(backbone, batch, SEEDS, 3).tokens == Greedy().generate(backbone, batch, SEEDS, 3).tokens


def test_roi_grid_nearest_cell_centres(setup):
    backbone, _, _, _ = setup
    g = backbone.grid_size
    grid = roi_grid(backbone, RoI(boxes=((0.0, 0.0, 112.0, 224.0),)), (224, 224)).reshape(g, g)
    assert grid[:, : g // 2].all() and not grid[:, g // 2:].any()


def relevance(feats: torch.Tensor) -> torch.Tensor:
    return (feats.sum(-1) / 100).softmax(-1)


def analytic(method):
    """Replace the model relevance by r = softmax(Σ_d features / 100) so the loop can be checked by hand."""
    method.relevance = lambda backbone, ids, mask, feats: relevance(feats)
    return method


@pytest.mark.parametrize("variant", ["default", "reference"])
def test_loop_arithmetic(setup, variant):
    backbone, _, _, batch = setup
    roi = torch.zeros(3, backbone.num_image_tokens)
    roi[:, :5] = 1.0
    p = dict(steps=2, lr=0.5, beta=0.5, alpha=400.0, early_stop=False)
    method = analytic(ControlMLLM(variant=variant, **p))
    with torch.enable_grad():
        got = method.optimise(backbone, batch, roi)
        e = encode_images(backbone.model, batch.pixel_values).detach()
        latent, previous, total = torch.zeros_like(e, requires_grad=True), torch.zeros_like(e), torch.zeros_like(e)
        for _ in range(2):
            ema = 0.5 * latent + 0.5 * previous
            offset = total + ema if variant == "reference" else ema
            loss = energy(relevance(e + offset), roi, 400.0).sum()
            (g,) = torch.autograd.grad(loss, latent)
            latent = (latent - 0.5 * g).detach().requires_grad_(True)
            previous = ema.detach()
            total = total + previous
        end = (0.5 * latent + 0.5 * previous).detach()
        want = e + (total + end if variant == "reference" else end)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, e)


def test_early_stop_keeps_that_steps_offset(setup):
    backbone, _, _, batch = setup
    roi = torch.zeros(3, backbone.num_image_tokens)
    roi[:, :5] = 1.0
    method = analytic(ControlMLLM(steps=5, lr=50.0, stop_ratio=1e-9))
    with torch.enable_grad():
        got = method.optimise(backbone, batch, roi)
        e = encode_images(backbone.model, batch.pixel_values).detach()
        latent = torch.zeros_like(e, requires_grad=True)
        loss = energy(relevance(e + 0.5 * latent), roi, 400.0).sum()
        (g,) = torch.autograd.grad(loss, latent)
        p1 = -50.0 * g
        want = e + 0.5 * p1  # stopped at t=1: P̃_1 = βP_1 + (1−β)P̃_0 with P̃_0 = βP_0 = 0
    torch.testing.assert_close(got, want)


def test_batched_equals_per_sample(setup):
    backbone, ss, images, batch = setup
    method = ControlMLLM(steps=2)
    grids = torch.as_tensor(np.stack([roi_grid(backbone, s.roi, im.size) for s, im in zip(ss, images)]))
    with torch.enable_grad():
        together = method.optimise(backbone, batch, grids)
        for i in (0, 2):
            alone = method.optimise(backbone, select_rows(batch, [i]), grids[i:i + 1])
            torch.testing.assert_close(alone[0], together[i], atol=1e-4, rtol=1e-4)


def test_finite_difference_gradient():
    backbone = tiny_backbone(seed=3)
    backbone.model.double()
    ss, images, batch = encode(backbone, 1, roi=True)
    batch.pixel_values = batch.pixel_values.double()
    method = ControlMLLM()
    roi = torch.as_tensor(roi_grid(backbone, ss[0].roi, images[0].size), dtype=torch.float64)[None]
    with torch.enable_grad():
        e = encode_images(backbone.model, batch.pixel_values).detach()
        latent = torch.zeros_like(e, requires_grad=True)

        def loss_at(p):
            return energy(method.relevance(backbone, batch.input_ids, batch.attention_mask, e + p), roi, 400.0).sum()

        (g,) = torch.autograd.grad(loss_at(latent), latent)
        direction = torch.randn(e.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        eps = 1e-2  # RMSNorm runs in float32 internally: a larger step keeps rounding below the O(eps²) error
        with torch.no_grad():
            fd = (loss_at(eps * direction) - loss_at(-eps * direction)) / (2 * eps)
    assert float((g * direction).sum()) == pytest.approx(float(fd), rel=1e-2)
