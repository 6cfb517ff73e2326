"""VCD, M3ID, AVISC and DAMRO (and PAI's combine): hand-computed values and the spec's reduction properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from decoding_fixtures import SEEDS, recording, select_rows, tiny_backbone

from medbench.engine import Branch, StepwiseDecoding, encode_images, image_inputs, joint_prefill
from medbench.method import MethodArgsError
from medbench.methods.avisc import AVISC, blind_tokens
from medbench.methods.contrastive import contrast, derived_generator, plausible
from medbench.methods.damro import DAMRO, vision_encoder_layers
from medbench.methods.greedy import Greedy
from medbench.methods.m3id import M3ID, m3id_weight
from medbench.methods.nucleus import sample_rows
from medbench.methods.pai import PAI
from medbench.methods.vcd import VCD, add_diffusion_noise, noise_schedule

INF = float("-inf")


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
def ddpm_alpha_bar(step: int) -> float:
    """ᾱ_T of VCD's schedule computed here: β_k = sigmoid(linspace(−6, 6, 1000))·(5e-3 − 1e-5) + 1e-5."""
    betas = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, 1000))) * (5e-3 - 1e-5) + 1e-5
    return float(np.prod(1.0 - betas[: step + 1]))


def hand_noised(pixel_values: torch.Tensor, step: int, noise: torch.Tensor) -> torch.Tensor:
    """VCD Eq. 2, ``sqrt(ᾱ_T)·v + sqrt(1−ᾱ_T)·ε``, in float64."""
    bar = ddpm_alpha_bar(step)
    return (math.sqrt(bar) * pixel_values.double() + math.sqrt(1.0 - bar) * noise.double()).float()


def noise_draws(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    """ε: one standard-normal float32 draw of one image's shape per sample generator."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])


def test_vcd_schedule_constants():
    bar = noise_schedule()
    assert bar[500].sqrt().item() == pytest.approx(0.8630, abs=1e-4)
    assert (1 - bar[500]).sqrt().item() == pytest.approx(0.5052, abs=1e-4)
    assert bar[999].sqrt().item() == pytest.approx(0.2850, abs=1e-4)
    assert (1 - bar[999]).sqrt().item() == pytest.approx(0.9585, abs=1e-4)
    assert math.sqrt(ddpm_alpha_bar(500)) == pytest.approx(0.8630, abs=1e-4)  # the reference below
    assert math.sqrt(1 - ddpm_alpha_bar(999)) == pytest.approx(0.9585, abs=1e-4)


@pytest.mark.parametrize("step", [500, 999])
def test_vcd_noised_pixels_follow_the_ddpm_formula(setup, step):
    *_, batch = setup
    shape = tuple(batch.pixel_values.shape[1:])
    got = add_diffusion_noise(batch.pixel_values, step, [torch.Generator().manual_seed(s) for s in SEEDS])
    eps = noise_draws(shape, [torch.Generator().manual_seed(s) for s in SEEDS])
    torch.testing.assert_close(got, hand_noised(batch.pixel_values, step, eps), rtol=1e-5, atol=1e-5)
    # with the spec's 4-decimal constants: two pixels equal to 1 at T=500 become 0.8630 + 0.5052·ε
    ones = torch.ones(1, 1, 1, 2)
    unit = add_diffusion_noise(ones, 500, [torch.Generator().manual_seed(0)])
    eps0 = torch.randn((1, 1, 2), generator=torch.Generator().manual_seed(0))
    assert unit.flatten().tolist() == pytest.approx((0.8630 + 0.5052 * eps0.flatten()).tolist(), abs=2e-4)


def test_vcd_alpha0_greedy_equals_greedy(setup):
    backbone, *_, batch = setup
    greedy = Greedy().generate(backbone, batch, SEEDS, 4).tokens
    assert VCD(alpha=0.0, beta=0.5, selection="greedy").generate(backbone, batch, SEEDS, 4).tokens == greedy


def test_vcd_alpha0_beta0_sampling_equals_engine_sampling(setup):
    backbone, *_, batch = setup
    plain = PlainSampling().generate(backbone, batch, SEEDS, 4).tokens
    assert VCD(alpha=0.0, beta=0.0).generate(backbone, batch, SEEDS, 4).tokens == plain


def test_vcd_contrast_row_equals_standalone_noised_run(setup):
    backbone, *_, batch = setup
    method = recording(VCD)(selection="greedy")
    gen = method.generate(backbone, batch, SEEDS, 3)
    # the standalone run's pixels come from Eq. 2 computed here, ε from each sample's noise generator
    eps = noise_draws(tuple(batch.pixel_values.shape[1:]), [derived_generator(s, "vcd-noise") for s in SEEDS])
    noised = hand_noised(batch.pixel_values, 500, eps)
    torch.testing.assert_close(method.branches(backbone, batch, SEEDS)[1].pixel_values, noised,
                               rtol=1e-5, atol=1e-5)
    tokens = torch.tensor([row[:2] for row in gen.tokens])
    for step in range(3):
        ref = teacher_forced(backbone, batch, tokens[:, :step], pixel_values=noised)
        torch.testing.assert_close(method.seen[step][1], ref, atol=1e-4, rtol=1e-4)


def test_vcd_noise_is_per_sample(setup):
    *_, batch = setup
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
    backbone, *_, batch = setup
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
    backbone, *_, batch = setup
    greedy = Greedy().generate(backbone, batch, SEEDS, 3).tokens
    assert AVISC(alpha=0.0, selection="greedy").generate(backbone, batch, SEEDS, 3).tokens == greedy


def test_avisc_nothing_zeroed_gives_expert(setup):
    backbone, *_, batch = setup
    method = recording(AVISC)(variant="reference", lamb=float("-inf"), selection="greedy")
    method.generate(backbone, batch, SEEDS, 2)
    for expert, negative in method.seen:
        torch.testing.assert_close(negative, expert, atol=1e-5, rtol=1e-5)


def test_avisc_all_zeroed_equals_manual_forward_and_staged_cache(setup):
    backbone, *_, batch = setup
    method = recording(AVISC)(variant="reference", lamb=float("inf"), selection="greedy")
    gen = method.generate(backbone, batch, SEEDS, 2)
    zeros = torch.zeros_like(encode_images(backbone.model, batch.pixel_values))
    flat = image_inputs(zeros.reshape(-1, zeros.shape[-1]))
    tokens = torch.tensor([row[:1] for row in gen.tokens])
    for step in range(2):
        ref = teacher_forced(backbone, batch, tokens[:, :step], **flat)
        torch.testing.assert_close(method.seen[step][1], ref, atol=1e-4, rtol=1e-4)


def test_avisc_blind_set_padding_invariant(setup):
    backbone, *_, batch = setup
    method = AVISC(selection="greedy")
    method.generate(backbone, batch, SEEDS, 1)
    together = method.blind.clone()
    assert int(together.sum(-1)[0]) == 10
    for i in range(3):
        method.generate(backbone, select_rows(batch, [i]), [SEEDS[i]], 1)
        assert torch.equal(method.blind[0], together[i])


def hand_blind_set(attn: np.ndarray, layer_gamma: float, top_blind: int) -> set[int]:
    """AVISC's default rule on one row's per-layer image attention [L, N], written out here:
    layers sorted by their share of the image attention; the first k with k = #{cumsum < γ} + 1;
    their mean map; its ``top_blind`` largest tokens."""
    share = attn.sum(-1) / attn.sum()
    order = np.argsort(-share, kind="stable")
    k = int((np.cumsum(share[order]) < layer_gamma).sum()) + 1
    mean = attn[order[:k]].mean(0)
    ranked = np.argsort(-mean, kind="stable")
    assert mean[ranked[top_blind - 1]] - mean[ranked[top_blind]] > 1e-6, "near-tie at the cut"
    return set(ranked[:top_blind].tolist())


def test_avisc_blind_set_comes_from_the_last_prompt_row(setup):
    """The blind set equals the rule applied to an eager forward's last prompt row (not any other row)."""
    backbone, *_, batch = setup
    method = AVISC(selection="greedy", blind_rule="topk", top_blind=10, layer_gamma=0.5)
    method.generate(backbone, batch, SEEDS, 1)
    eager = tiny_backbone()  # the same weights as the shared backbone, with HF's eager attention
    eager.model.set_attn_implementation({"text_config": "eager"})
    position = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = eager.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position,
                          pixel_values=batch.pixel_values, output_attentions=True)
    image = backbone.image_token_mask(batch.input_ids)
    for i in range(batch.input_ids.shape[0]):
        cols = image[i].nonzero()[:, 0]
        rows = {}
        for name, q in (("last", -1), ("second to last", -2)):
            per_layer = torch.stack([a[i, :, q, cols].mean(0) for a in out.attentions]).double().numpy()
            rows[name] = hand_blind_set(per_layer, 0.5, 10)
        assert rows["last"] != rows["second to last"]  # the check below can tell the rows apart
        assert set(method.blind[i].nonzero()[:, 0].tolist()) == rows["last"]


# ---- DAMRO -------------------------------------------------------------------------------------
def test_damro_qk_recompute_equals_hook_capture(setup):
    backbone, *_, batch = setup
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
    backbone, *_, batch = setup
    branches = DAMRO(k=7).branches(backbone, batch, SEEDS)
    n = backbone.num_image_tokens
    assert branches[1].image_features.shape[1] == 7
    assert branches[1].attention_mask.sum(-1).tolist() == (batch.attention_mask.sum(-1) - n + 7).tolist()


def test_damro_all_tokens_raster_equals_expert(setup):
    backbone, *_, batch = setup
    method = recording(DAMRO)(k=backbone.num_image_tokens, order="raster", selection="greedy")
    method.generate(backbone, batch, SEEDS, 2)
    for expert, negative in method.seen:
        torch.testing.assert_close(negative, expert, atol=1e-4, rtol=1e-4)


def test_damro_alpha0_and_medheval(setup):
    backbone, *_, batch = setup
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


def test_damro_a3tune_is_the_scripts_fall_through_sampling(setup):
    """A3Tune's ``--baseline damro``: no contrast row, sampling at T=0.7 with HF's default top-k 50."""
    backbone, *_, batch = setup
    method = recording(DAMRO)(variant="a3tune")
    p = method.params
    assert (p.contrast_row, p.selection, p.temperature, p.top_k, p.top_p) == (False, "sample", 0.7, 50, 1.0)
    assert len(method.branches(backbone, batch, SEEDS)) == 1
    got = method.generate(backbone, batch, SEEDS, 4).tokens
    assert all(len(seen) == 1 for seen in method.seen)
    plain = VCD(alpha=0.0, beta=0.0, temperature=0.7, top_k=50).generate(backbone, batch, SEEDS, 4).tokens
    assert got == plain
    assert DAMRO().params.contrast_row is True


def test_branch_features_zero_rows_only_where_asked(setup):
    backbone, *_, batch = setup
    feats = encode_images(backbone.model, batch.pixel_values)
    a = joint_prefill(backbone, [Branch("f", batch.input_ids, batch.attention_mask, image_features=feats)])
    b = joint_prefill(backbone, [Branch("p", batch.input_ids, batch.attention_mask, batch.pixel_values)])
    torch.testing.assert_close(a.out.logits, b.out.logits)


# ---- PAI's combine (its decoding tests are in test_decoding_dola_pai.py) ----------------------
def test_pai_combine_by_hand_at_gamma_1_1():
    """``s = γ·c − (γ−1)·u`` on ``{c ≥ log 0.1 + max c}``; logits that are log-probabilities are their own c, u."""
    p, q = [0.5, 0.25, 0.24, 0.01], [0.25, 0.5, 0.24, 0.01]
    out = PAI(gamma=1.1).combine([torch.log(torch.tensor([p])), torch.log(torch.tensor([q]))], step=0)
    ln = math.log
    expected = [1.1 * ln(0.5) - 0.1 * ln(0.25),   # -0.62383
                1.1 * ln(0.25) - 0.1 * ln(0.5),   # -1.45561
                ln(0.24)]                          # equal rows: c
    torch.testing.assert_close(out[0, :3], torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert out[0, 3].item() == INF  # ln 0.01 < ln 0.1 + ln 0.5
    assert out[0, :3].tolist() == pytest.approx([-0.623832, -1.455609, -1.427116], abs=1e-5)
    two = PAI(gamma=2.0).combine([torch.log(torch.tensor([p])), torch.log(torch.tensor([q]))], step=0)
    assert two[0, :3].tolist() == pytest.approx([2 * ln(0.5) - ln(0.25), 2 * ln(0.25) - ln(0.5), ln(0.24)], abs=1e-6)
