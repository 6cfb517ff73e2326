"""ControlMLLM: RoI refusal, reductions to greedy, loop arithmetic, batching and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decoding_fixtures import SEEDS, encode, samples, select_rows, shared_backbone, tiny_backbone

from medbench.backbones.base import Backbone
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


def test_loop_arithmetic(setup):
    backbone, _, _, batch = setup
    roi = torch.zeros(3, backbone.num_image_tokens)
    roi[:, :5] = 1.0
    p = dict(steps=2, lr=0.5, beta=0.5, alpha=400.0, early_stop=False)
    method = analytic(ControlMLLM(**p))
    with torch.enable_grad():
        got = method.optimise(backbone, batch, roi)
        e = encode_images(backbone.model, batch.pixel_values).detach()
        latent, previous = torch.zeros_like(e, requires_grad=True), torch.zeros_like(e)
        for _ in range(2):
            ema = 0.5 * latent + 0.5 * previous
            loss = energy(relevance(e + ema), roi, 400.0).sum()
            (g,) = torch.autograd.grad(loss, latent)
            latent = (latent - 0.5 * g).detach().requires_grad_(True)
            previous = ema.detach()
        want = e + (0.5 * latent + 0.5 * previous).detach()
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, e)


def reference_loop(relevance_of, e, roi, *, alpha, beta, lr, steps, early_stop, threshold=25.0):
    """ControlMLLM's ``llava_roc.py`` optimisation loop for one sample, statement by statement.

    ``e`` [1, N, D] plays the image slice of ``inputs_embeds``: aliased (``new = inputs_embeds``) and
    updated in place, the EMA history starting as the Parameter itself, the loss-change test in
    percent, and the after-loop EMA added once more.
    """
    inputs_embeds = e.clone()
    visual_prompt = torch.nn.Parameter(torch.zeros_like(inputs_embeds))
    vprompt_history = visual_prompt
    loss_history = []
    for _ in range(steps):
        new_inputs_embeds = inputs_embeds
        vprompt_cur = beta * visual_prompt + (1 - beta) * vprompt_history
        new_inputs_embeds += vprompt_cur
        loss = energy(relevance_of(new_inputs_embeds), roi, alpha).sum()
        loss_history.append(loss.item())
        if early_stop and len(loss_history) >= 2 \
                and abs((loss_history[-1] - loss_history[0]) / loss_history[0]) * 100 > threshold:
            break
        vprompt_history = vprompt_cur
        grad_cond = torch.autograd.grad(loss, [visual_prompt], retain_graph=True)[0]
        visual_prompt = visual_prompt - lr * grad_cond
    with torch.no_grad():
        new_inputs_embeds = inputs_embeds
        vprompt_history = beta * visual_prompt + (1 - beta) * vprompt_history
        new_inputs_embeds += vprompt_history
    return new_inputs_embeds.detach()


@pytest.mark.parametrize(("steps", "lr", "stop_ratio", "early_stop"),
                         [(3, 0.5, 0.25, False), (5, 50.0, 1e-9, True), (4, 5.0, 0.22, True)],
                         ids=["no-stop", "stop-at-1", "stops-at-1-and-2"])
def test_reference_variant_equals_transcribed_reference_loop(setup, steps, lr, stop_ratio, early_stop):
    backbone, _, _, batch = setup
    roi = torch.zeros(3, backbone.num_image_tokens)
    roi[:, :5] = 1.0
    args = dict(steps=steps, lr=lr, beta=0.5, alpha=400.0, early_stop=early_stop, stop_ratio=stop_ratio)
    method = analytic(ControlMLLM(variant="reference", **args))
    with torch.enable_grad():
        got = method.optimise(backbone, batch, roi)
        e = encode_images(backbone.model, batch.pixel_values).detach()
        for i in range(3):
            want = reference_loop(relevance, e[i:i + 1], roi[i:i + 1], alpha=400.0, beta=0.5, lr=lr, steps=steps,
                                  early_stop=early_stop, threshold=100 * stop_ratio)
            torch.testing.assert_close(got[i:i + 1], want)
        default = analytic(ControlMLLM(**args)).optimise(backbone, batch, roi)
    assert not torch.allclose(got, default)


def test_reference_variant_equals_transcription_on_the_model():
    backbone = tiny_backbone(seed=3)
    backbone.model.double()
    ss, images, batch = encode(backbone, 2, roi=True)
    batch.pixel_values = batch.pixel_values.double()
    roi = torch.as_tensor(np.stack([roi_grid(backbone, s.roi, im.size) for s, im in zip(ss, images)]))
    method = ControlMLLM(variant="reference", steps=3, lr=20.0)
    with torch.enable_grad():
        got = method.optimise(backbone, batch, roi.double())
        e = encode_images(backbone.model, batch.pixel_values).detach()
        for i in range(2):
            one = select_rows(batch, [i])
            want = reference_loop(lambda emb, one=one: method.relevance(backbone, one.input_ids, one.attention_mask, emb),
                                  e[i:i + 1], roi[i:i + 1].double(), alpha=400.0, beta=0.5, lr=20.0, steps=3,
                                  early_stop=True)
            torch.testing.assert_close(got[i:i + 1], want, atol=1e-9, rtol=1e-7)
    assert not torch.allclose(got, e)


def test_reference_first_step_and_early_stop_by_hand(setup):
    """By hand at β=0.5: the reference's first step is 1·g (default β·g), and an early stop adds P̃_t twice."""
    backbone, _, _, batch = setup
    roi = torch.zeros(3, backbone.num_image_tokens)
    roi[:, :5] = 1.0
    with torch.enable_grad():
        e = encode_images(backbone.model, batch.pixel_values).detach()
        latent = torch.zeros_like(e, requires_grad=True)
        (g0,) = torch.autograd.grad(energy(relevance(e + latent), roi, 400.0).sum(), latent)  # ∂L/∂E at E
        one = dict(steps=1, lr=2.0, early_stop=False)
        default = analytic(ControlMLLM(**one)).optimise(backbone, batch, roi) - e
        reference = analytic(ControlMLLM(variant="reference", **one)).optimise(backbone, batch, roi) - e
        stop = dict(steps=5, lr=2.0, stop_ratio=1e-9)
        default_stop = analytic(ControlMLLM(**stop)).optimise(backbone, batch, roi) - e
        reference_stop = analytic(ControlMLLM(variant="reference", **stop)).optimise(backbone, batch, roi) - e
    # T=1: P_1 = −η·β·g (default) or −η·g (reference); answer offset P̃* = β·P_1 (P̃_0 = 0).
    torch.testing.assert_close(default, 0.5 * (-2.0 * 0.5 * g0))
    torch.testing.assert_close(reference, 0.5 * (-2.0 * g0))
    # Stop at t=1: default P̃_1 = β·P_1 = −η·β²·g; reference P̃_0 + P̃_1 + P̃_1 = 2·β·(−η·g).
    torch.testing.assert_close(default_stop, -2.0 * 0.25 * g0)
    torch.testing.assert_close(reference_stop, 2 * 0.5 * (-2.0 * g0))
    assert float(g0.abs().max()) > 0


class V1Like(Backbone):
    controlmllm_lr = 4.0


def test_step_size_is_a_backbone_attribute_recorded_in_the_args(setup):
    from medbench.backbones.llava import LlavaMedV1, LlavaMedV15

    backbone, ss, images, batch = setup
    assert (LlavaMedV1.controlmllm_lr, LlavaMedV15.controlmllm_lr, Backbone.controlmllm_lr) == (4.0, 1.0, 1.0)
    v1 = V1Like(backbone.model, backbone.processor, backbone.template, checkpoint_id="v1-like")
    roi = torch.as_tensor(np.stack([roi_grid(backbone, s.roi, im.size) for s, im in zip(ss, images)]))
    with torch.enable_grad():
        on_v1 = ControlMLLM(steps=2).optimise(v1, batch, roi)
        explicit = ControlMLLM(steps=2, lr=4.0).optimise(backbone, batch, roi)
        plain = ControlMLLM(steps=2).optimise(backbone, batch, roi)
    torch.testing.assert_close(on_v1, explicit)
    assert not torch.allclose(on_v1, plain)
    method = ControlMLLM()
    assert method.resolved_args()["lr"] is None  # unbound: the backbone decides
    method.bind(v1)
    assert method.resolved_args()["lr"] == 4.0
    method.bind(backbone)
    assert method.resolved_args()["lr"] == 1.0
    chosen = ControlMLLM(lr=0.3)
    chosen.bind(v1)
    assert chosen.resolved_args()["lr"] == 0.3


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
