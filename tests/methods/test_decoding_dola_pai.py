"""DoLa (early-exit contrast) and PAI (attention amplification + CFG): rules and reductions."""

from __future__ import annotations

import math
import types

import pytest
import torch
from decoding_fixtures import SEEDS, logits_of, recording, select_rows

from medbench.attention import AttentionEdit, eager_rows, edit_attention
from medbench.engine import joint_prefill, main_branch
from medbench.method import MethodArgsError
from medbench.methods.contrastive import text_only_branch
from medbench.methods.dola import DoLa, candidate_layers, dola_scores, layer_divergence
from medbench.methods.greedy import Greedy
from medbench.methods.pai import PAI


# ---- DoLa --------------------------------------------------------------------------------------
def test_dola_candidate_layer_rule():
    assert candidate_layers("low", 32, tied=False) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert candidate_layers("low", 32, tied=True) == [2, 4, 6, 8, 10, 12, 14]
    assert candidate_layers("high", 32, tied=False) == list(range(16, 32, 2))
    assert candidate_layers("low", 4, tied=False) == [0]
    with pytest.raises(MethodArgsError, match="out of range"):
        candidate_layers("0,4", 4, tied=False)


def test_dola_hand_divergence_and_scores():
    mature = torch.tensor([[3.0, 0.0, 0.0]])
    early = torch.tensor([[0.0, 0.0, 0.0]])
    qn, qj = mature.softmax(-1), early.softmax(-1)
    m = (qn + qj) / 2
    expected = 0.5 * ((m * (m.log() - qn.log())).mean() + (m * (m.log() - qj.log())).mean())
    torch.testing.assert_close(layer_divergence(mature, early)[0], expected)
    assert layer_divergence(mature, mature).abs().max() < 1e-7
    out = dola_scores(mature, early, 0.1)  # q_N = (.909, .045, .045): only id 0 is ≥ 0.1·max
    keep = torch.tensor([[True, False, False]])
    assert torch.equal(torch.isfinite(out), keep)
    torch.testing.assert_close(out[keep], (qn.log() - qj.log())[keep])


def test_dola_relative_top_1_is_greedy(setup):
    backbone, _, _, batch = setup
    greedy = Greedy().generate(backbone, batch, SEEDS, 4).tokens
    assert DoLa(relative_top=1.0, candidate_layers="0,1,2").generate(backbone, batch, SEEDS, 4).tokens == greedy


def test_dola_static_premature_equals_mature_picks_lowest_head_id(setup):
    backbone, _, _, batch = setup
    first = DoLa(premature_layer=4).generate(backbone, batch, SEEDS, 1).tokens
    expert = logits_of(backbone, batch.input_ids, batch.attention_mask, batch.pixel_values).log_softmax(-1)
    head = expert >= expert.max(-1, keepdim=True).values + math.log(0.1)
    lowest = [int(row.nonzero()[0]) for row in head]
    assert [row[0] for row in first] == lowest
    assert lowest != [int(i) for i in expert.argmax(-1)]  # not greedy (spec §5 correction 1)


def test_dola_early_exit_logits_without_norm(setup):
    backbone, _, _, batch = setup
    method = recording(DoLa)(candidate_layers="1,2")
    method.generate(backbone, batch, SEEDS, 1)
    with torch.no_grad():
        out = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             pixel_values=batch.pixel_values, output_hidden_states=True)
        head = backbone.model.get_output_embeddings()
        norm = backbone.model.model.language_model.norm
        torch.testing.assert_close(method.seen[0][0], out.logits[:, -1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(method.seen[0][1], head(out.hidden_states[1][:, -1]), atol=1e-4, rtol=1e-4)
    normed = recording(DoLa)(candidate_layers="1,2", premature_norm=True)
    normed.generate(backbone, batch, SEEDS, 1)
    with torch.no_grad():
        torch.testing.assert_close(normed.seen[0][1], head(norm(out.hidden_states[1][:, -1])), atol=1e-4, rtol=1e-4)


def test_dola_reference_equals_default_at_batch_1(setup):
    backbone, _, _, batch = setup
    for i in range(3):
        one = select_rows(batch, [i])
        a = DoLa(candidate_layers="0,1,2,3").generate(backbone, one, [SEEDS[i]], 3).tokens
        assert DoLa(variant="reference", candidate_layers="0,1,2,3").generate(backbone, one, [SEEDS[i]], 3).tokens == a


def test_dola_batch_mean_picks_one_layer():
    mature = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    early = [torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),   # row 0: same as mature; row 1: a little off
             torch.tensor([[0.0, 0.0, 3.0], [0.0, 3.0, 0.0]])]   # row 0: far off; row 1: same as mature
    per_row = DoLa().combine([mature, *early], 0)
    pooled = DoLa(variant="reference").combine([mature, *early], 0)
    assert torch.equal(per_row[0], dola_scores(mature, early[1], 0.1)[0])
    assert torch.equal(per_row[1], dola_scores(mature, early[0], 0.1)[1])
    assert torch.equal(pooled[1], dola_scores(mature, early[1], 0.1)[1])  # the batch mean picks layer 2 for all


def test_dola_sample_variant_resolves_a3tune_arguments():
    args = DoLa(variant="sample").resolved_args()
    assert (args["selection"], args["temperature"], args["top_p"], args["top_k"]) == ("sample", 0.9, 0.95, 0)
    assert DoLa(variant="sample", temperature="1.0").params.temperature == 1.0  # explicit flags win


# ---- PAI ---------------------------------------------------------------------------------------
def test_pai_amplification_hand_values():
    module = types.SimpleNamespace(num_key_value_groups=1, layer_idx=0)
    q = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    k = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.5, 0.0]]).view(1, 1, 3, 2)
    v = torch.eye(3)[:, :2].reshape(1, 1, 3, 2)
    edit = AttentionEdit(key_mask=torch.tensor([[False, True, True]]), alpha=0.5, layers={0})
    out = eager_rows(module, q, k, v, None, 1.0, edit)
    a = torch.tensor([1.0, -2.0, 0.5])
    amplified = torch.tensor([1.0, -2.0 + 0.5 * 2.0, 0.5 + 0.5 * 0.5])
    torch.testing.assert_close(out[0, 0, 0], amplified.softmax(-1)[:2])
    assert not torch.allclose(out[0, 0, 0], a.softmax(-1)[:2])


def test_pai_alpha0_reproduces_eager_exactly(setup):
    backbone, _, _, batch = setup
    model = backbone.model
    edit = AttentionEdit(key_mask=backbone.image_token_mask(batch.input_ids), alpha=0.0, eager=True)
    with torch.no_grad(), edit_attention(edit):
        ours = joint_prefill(backbone, [main_branch(batch)]).out.logits
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            position = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            eager = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position,
                          pixel_values=batch.pixel_values, logits_to_keep=1).logits
    finally:
        from medbench.attention import install

        install(model)
    assert torch.equal(ours, eager)
    assert PAI(alpha=0.0, gamma=1.0, attn_backend="eager").generate(backbone, batch, SEEDS, 4).tokens == \
        Greedy().generate(backbone, batch, SEEDS, 4).tokens


def test_pai_gamma1_is_greedy_on_the_amplified_model(setup):
    backbone, _, _, batch = setup
    edit = AttentionEdit(key_mask=backbone.image_token_mask(batch.input_ids), alpha=0.2, layers={2, 3})
    with edit_attention(edit):
        amplified = Greedy().generate(backbone, batch, SEEDS, 4).tokens
    assert PAI(gamma=1.0).generate(backbone, batch, SEEDS, 4).tokens == amplified
    assert amplified != Greedy().generate(backbone, batch, SEEDS, 4).tokens


def test_pai_cfg_row_equals_standalone_text_run(setup):
    backbone, _, _, batch = setup
    method = recording(PAI)()
    method.generate(backbone, batch, SEEDS, 1)
    text = text_only_branch(backbone, batch)
    torch.testing.assert_close(method.seen[0][1], logits_of(backbone, text.input_ids, text.attention_mask, None),
                               atol=1e-5, rtol=1e-5)


def test_pai_reference_skips_first_forward(setup):
    backbone, _, _, batch = setup
    ref, default = recording(PAI)(variant="reference"), recording(PAI)()
    ref.generate(backbone, batch, SEEDS, 2)
    default.generate(backbone, batch, SEEDS, 2)
    plain = logits_of(backbone, batch.input_ids, batch.attention_mask, batch.pixel_values)
    torch.testing.assert_close(ref.seen[0][0], plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(default.seen[0][0], plain, atol=1e-3)


def test_pai_a3tune_negative_prompt(setup):
    backbone, samples, images, batch = setup
    method = PAI(variant="a3tune")
    with pytest.raises(MethodArgsError, match="prepare"):
        method.branches(backbone, batch, SEEDS)
    method.prepare(backbone, samples, images)
    cfg = method.branches(backbone, batch, SEEDS)[1]
    first = backbone.tokenizer(samples[0].question)["input_ids"]
    assert cfg.input_ids[0][cfg.attention_mask[0].bool()].tolist() == first
    assert first[0] == backbone.tokenizer.bos_token_id
    assert len(method.generate(backbone, batch, SEEDS, 2).tokens) == 3


def test_pai_a3tune_negative_prompt_on_v1_keeps_the_placeholder_text(setup):
    """A3Tune's v1 script passes "<image>\\n" + question: BOS + that text, no image token in the CFG row."""
    from medbench.backbones.base import Backbone

    class V1Like(Backbone):
        a3tune_wiring = "v1"

    backbone, samples, images, batch = setup
    v1 = V1Like(backbone.model, backbone.processor, backbone.template, checkpoint_id="v1-like")
    method = PAI(variant="a3tune")
    method.prepare(v1, samples, images)
    cfg = method.branches(v1, batch, SEEDS)[1]
    text = backbone.tokenizer("<image>\n" + samples[0].question, add_special_tokens=False,
                              split_special_tokens=True)["input_ids"]
    row = cfg.input_ids[0][cfg.attention_mask[0].bool()].tolist()
    assert row == [backbone.tokenizer.bos_token_id, *text]
    assert backbone.image_token_id not in cfg.input_ids[cfg.attention_mask.bool()].tolist()
    assert len(row) > len(backbone.tokenizer(samples[0].question)["input_ids"]) + 2
    assert len(method.generate(v1, batch, SEEDS, 2).tokens) == 3
