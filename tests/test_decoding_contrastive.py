"""VCD, M3ID, AVISC and DAMRO: hand-computed combine values and the spec's reduction properties."""

from __future__ import annotations

import math

import pytest
import torch
from decoding_fixtures import SEEDS, encode, recording, select_rows, shared_backbone

from medbench.engine import Branch, StepwiseDecoding, encode_images, image_inputs, joint_prefill
from medbench.method import MethodArgsError
from medbench.methods.avisc import AVISC, blind_tokens
from medbench.methods.contrastive import contrast, plausible
from medbench.methods.damro import DAMRO, vision_encoder_layers
from medbench.methods.greedy import Greedy
from medbench.methods.m3id import M3ID, m3id_weight
from medbench.methods.nucleus import sample_rows
from medbench.methods.vcd import VCD, add_diffusion_noise, noise_schedule

INF = float("-inf")


@pytest.fixture(scope="module")
def setup():
    backbone = shared_backbone()
    samples, images, batch = encode(backbone, 3)
    return backbone, batch


class PlainSampling(StepwiseDecoding):
    name = "plain-sampling"

    def select(self, scores, generators):
        return sample_rows(scores, generators)


def teacher_forced(backbone, batch, tokens, **image):
    """Uncached last-position logits of prompt + ``tokens`` with the given image inputs."""
    ids = torch.cat([batch.input_ids, tokens], 1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(tokens)], 1)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return backbone.model(input_ids=ids, attention_mask=mask, position_ids=position, **image).logits[:, -1].float()


# ---- shared rule -------------------------------------------------------------------------------
def test_contrast_hand_values_and_plausibility():
    expert, neg = torch.tensor([[2.0, 1.0, -1.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    assert contrast(expert, neg, 1.0, 0.1).tolist() == [[3.0, 1.0, INF]]  # log 0.1 + 2 = -0.30
    assert contrast(expert, neg, 0.5, 0.5).tolist() == [[2.5, INF, INF]]  # log 0.5 + 2 = 1.31
    assert plausible(expert, 1.0).tolist() == [[True, False, False]]
    assert plausible(expert, 0.0).all()
    assert contrast(expert, neg, 1.0, 0.0).tolist() == [[3.0, 1.0, -3.0]]
    assert plausible(expert, 0.3).tolist() == [[True, True, False]]  # log 0.3 + 2 = 0.80
    assert contrast(expert, expert, 1.0, 0.1).tolist() == [[2.0, 1.0, INF]]  # equal rows: s = l on V_head


# ---- VCD ---------------------------------------------------------------------------------------
def test_vcd_schedule_constants():
    bar = noise_schedule()
    assert bar[500].sqrt().item() == pytest.approx(0.8630, abs=1e-4)
    assert (1 - bar[500]).sqrt().item() == pytest.approx(0.5052, abs=1e-4)
    assert bar[999].sqrt().item() == pytest.approx(0.2850, abs=1e-4)
    assert (1 - bar[999]).sqrt().item() == pytest.approx(0.9585, abs=1e-4)


def test_vcd_alpha0_greedy_equals_greedy(setup):
    backbone, batch = setup
    greedy = Greedy().generate(backbone, batch, SEEDS, 4).tokens
    assert VCD(alpha=0.0, beta=0.5, selection="greedy").generate(backbone, batch, SEEDS, 4).tokens == greedy


def test_vcd_alpha0_beta0_sampling_equals_engine_sampling(setup):
    backbone, batch = setup
    plain = PlainSampling().generate(backbone, batch, SEEDS, 4).tokens
    assert VCD(alpha=0.0, beta=0.0).generate(backbone, batch, SEEDS, 4).tokens == plain


def test_vcd_contrast_row_equals_standalone_noised_run(setup):
    backbone, batch = setup
    method = recording(VCD)(selection="greedy")
    gen = method.generate(backbone, batch, SEEDS, 3)
    noised = method.branches(backbone, batch, SEEDS)[1].pixel_values
    assert torch.equal(noised, VCD().branches(backbone, batch, SEEDS)[1].pixel_values)  # ε from the seed
    tokens = torch.tensor([row[:2] for row in gen.tokens])
    for step in range(3):
        ref = teacher_forced(backbone, batch, tokens[:, :step], pixel_values=noised)
        torch.testing.assert_close(method.seen[step][1], ref, atol=1e-4, rtol=1e-4)


def test_vcd_noise_is_per_sample(setup):
    _, batch = setup
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    noised = add_diffusion_noise(batch.pixel_values, 500, gens)
    single = add_diffusion_noise(batch.pixel_values[1:2], 500, [torch.Generator().manual_seed(SEEDS[1])])
    assert torch.equal(noised[1:2], single)


# ---- M3ID --------------------------------------------------------------------------------------
def test_m3id_weights():
    assert [round(m3id_weight(0.02, t), 2) for t in (1, 10, 50, 100)] == [0.02, 0.22, 1.72, 6.39]


def test_m3id_hand_combine():
    expert, neg = torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    c, u = expert.log_softmax(-1), neg.log_softmax(-1)
    w = math.exp(0.02 * 3) - 1
    out = M3ID().combine([expert, neg], step=2)
    assert out[0, 2].item() == INF
    torch.testing.assert_close(out[0, :2], (c + w * (c - u))[0, :2])


def test_m3id_lambda0_equals_vcd_alpha0(setup):
    backbone, batch = setup
    a = M3ID(lam=0.0).generate(backbone, batch, SEEDS, 4).tokens
    assert a == VCD(alpha=0.0).generate(backbone, batch, SEEDS, 4).tokens


def test_m3id_paper_gate_needs_alpha_conf():
    with pytest.raises(MethodArgsError, match="alpha_conf"):
        M3ID(variant="paper")
    gated = M3ID(variant="paper", alpha_conf=0.5)
    expert = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    out = gated.combine([expert, torch.zeros_like(expert)], step=9)
    torch.testing.assert_close(out[0, 0], expert.log_softmax(-1)[0, 0])  # confident row: no contrast
    assert out[1, 0] > expert.log_softmax(-1)[1, 0]


# ---- AVISC -------------------------------------------------------------------------------------
def test_avisc_blind_tokens_hand_example():
    attn = torch.tensor([[[0.1, 0.1, 0.1, 0.1, 0.6],    # layer share 1.0 / 1.5
                          [0.05, 0.05, 0.3, 0.05, 0.05],  # 0.5 / 1.5
                          [0.0, 0.0, 0.0, 0.0, 0.0]]])
    std = blind_tokens(attn, 0.5, "std", 10, 1.0)  # k = 1 layer: a = layer 0; mean .2 + std .2236
    assert std.tolist() == [[False, False, False, False, True]]
    both = blind_tokens(attn, 0.9, "topk", 2, 1.0)  # k = 2 layers: a = mean(layer 0, layer 1)
    assert both.tolist() == [[False, False, True, False, True]]
    assert blind_tokens(attn, 0.5, "std", 10, float("-inf")).all()
    assert not blind_tokens(attn, 0.5, "std", 10, float("inf")).any()


def test_avisc_alpha0_is_greedy(setup):
    backbone, batch = setup
    greedy = Greedy().generate(backbone, batch, SEEDS, 3).tokens
    assert AVISC(alpha=0.0, selection="greedy").generate(backbone, batch, SEEDS, 3).tokens == greedy


def test_avisc_nothing_zeroed_gives_expert(setup):
    backbone, batch = setup
    method = recording(AVISC)(variant="reference", lamb=float("-inf"), selection="greedy")
    method.generate(backbone, batch, SEEDS, 2)
    for expert, negative in method.seen:
        torch.testing.assert_close(negative, expert, atol=1e-5, rtol=1e-5)


def test_avisc_all_zeroed_equals_manual_forward_and_staged_cache(setup):
    backbone, batch = setup
    method = recording(AVISC)(variant="reference", lamb=float("inf"), selection="greedy")
    gen = method.generate(backbone, batch, SEEDS, 2)
    zeros = torch.zeros_like(encode_images(backbone.model, batch.pixel_values))
    flat = image_inputs(zeros.reshape(-1, zeros.shape[-1]))
    tokens = torch.tensor([row[:1] for row in gen.tokens])
    for step in range(2):
        ref = teacher_forced(backbone, batch, tokens[:, :step], **flat)
        torch.testing.assert_close(method.seen[step][1], ref, atol=1e-4, rtol=1e-4)


def test_avisc_blind_set_padding_invariant(setup):
    backbone, batch = setup
    method = AVISC(selection="greedy")
    method.generate(backbone, batch, SEEDS, 1)
    together = method.blind.clone()
    assert int(together.sum(-1)[0]) == 10
    for i in range(3):
        method.generate(backbone, select_rows(batch, [i]), [SEEDS[i]], 1)
        assert torch.equal(method.blind[0], together[i])


# ---- DAMRO -------------------------------------------------------------------------------------
def test_damro_qk_recompute_equals_hook_capture(setup):
    backbone, batch = setup
    layer = vision_encoder_layers(backbone.model)[-2]
    seen = {}
    hooks = [layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
             layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))]
    try:
        with torch.no_grad():
            out = backbone.model.get_image_features(pixel_values=batch.pixel_values, output_hidden_states=True)
            x = layer.layer_norm1(out.hidden_states[-3])
            q, k = layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(q, seen["q"])
    torch.testing.assert_close(k, seen["k"])


def test_damro_contrast_row_layout(setup):
    backbone, batch = setup
    branches = DAMRO(k=7).branches(backbone, batch, SEEDS)
    n = backbone.num_image_tokens
    assert branches[1].image_features.shape[1] == 7
    assert branches[1].attention_mask.sum(-1).tolist() == (batch.attention_mask.sum(-1) - n + 7).tolist()


def test_damro_all_tokens_raster_equals_expert(setup):
    backbone, batch = setup
    method = recording(DAMRO)(k=backbone.num_image_tokens, order="raster", selection="greedy")
    method.generate(backbone, batch, SEEDS, 2)
    for expert, negative in method.seen:
        torch.testing.assert_close(negative, expert, atol=1e-4, rtol=1e-4)


def test_damro_alpha0_and_medheval(setup):
    backbone, batch = setup
    greedy = Greedy().generate(backbone, batch, SEEDS, 3).tokens
    assert DAMRO(alpha=0.0, selection="greedy").generate(backbone, batch, SEEDS, 3).tokens == greedy
    med = DAMRO(variant="medheval", selection="greedy")
    branches = med.branches(backbone, batch, SEEDS)
    assert branches[1].input_ids.shape == batch.input_ids.shape
    kept = (branches[1].image_features.abs().sum(-1) > 0).sum(-1)
    assert kept.tolist() == [10, 10, 10]


def test_damro_reference_skips_processors():
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    history = torch.tensor([[2]])
    ref = DAMRO(variant="reference", temperature=0.5, repetition_penalty=2.0)
    assert torch.equal(ref.process(scores, history, 0), scores)
    assert not torch.equal(DAMRO(temperature=0.5).process(scores, history, 0), scores)


def test_branch_features_zero_rows_only_where_asked(setup):
    backbone, batch = setup
    feats = encode_images(backbone.model, batch.pixel_values)
    a = joint_prefill(backbone, [Branch("f", batch.input_ids, batch.attention_mask, image_features=feats)])
    b = joint_prefill(backbone, [Branch("p", batch.input_ids, batch.attention_mask, batch.pixel_values)])
    torch.testing.assert_close(a.out.logits, b.out.logits)
