"""Methods composed on the engine: batch invariance of every method, branch stacking, the NaN guard in
the decode loop, composition with a LoRA-wrapped model. (The engine's own primitives — HF parity,
seeds, top-p, attention capture, logit guards — are tested in test_engine.py.)"""

from __future__ import annotations

import pytest
import torch
from decoding_fixtures import (
    SEEDS,
    encode,
    logits_of,
    select_rows,
    shared_backbone,
    tiny_backbone,
)

from medbench.engine import (
    Branch,
    StepwiseDecoding,
    concat_rows,
    decode_loop,
    guard_scores,
    joint_prefill,
    main_branch,
)
from medbench.methods.contrastive import text_only_branch
from medbench.methods.greedy import Greedy
from medbench.registry import METHODS


@pytest.fixture(scope="module")
def setup():
    backbone = shared_backbone()
    samples, images, batch = encode(backbone, 3, roi=True)
    return backbone, samples, images, batch


INVARIANT = [
    ("greedy", {}),
    ("vcd", {"selection": "greedy"}),
    ("m3id", {"selection": "greedy", "lam": "0.5"}),
    ("avisc", {"selection": "greedy"}),
    ("damro", {"selection": "greedy"}),
    ("pai", {}),
    ("dola", {"candidate_layers": "0,1,2"}),
    ("controlmllm", {"steps": "2"}),
    ("vcd", {}),
    ("nucleus", {}),
    ("beam", {"num_beams": "3"}),
]


@pytest.mark.parametrize(("name", "args"), INVARIANT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(INVARIANT)])
def test_batch_size_invariance(setup, name, args):
    """A sample's tokens do not depend on the batch it lands in (left padding, per-sample seeds)."""
    backbone, samples, images, batch = setup
    method = METHODS.get(name)(**args)
    method.prepare(backbone, samples, images)
    together = method.generate(backbone, batch, SEEDS, 4).tokens
    for i in (0, 2):
        method.prepare(backbone, [samples[i]], [images[i]])
        alone = method.generate(backbone, select_rows(batch, [i]), [SEEDS[i]], 4).tokens
        assert alone[0] == together[i], (name, i)


def test_branch_rows_match_standalone_runs(setup):
    """An image-free branch and an image branch share one forward; each row equals its own run."""
    backbone, _, _, batch = setup
    text = text_only_branch(backbone, batch)
    state = joint_prefill(backbone, [main_branch(batch), text])
    logits = state.out.logits[:, -1].float()
    expert = logits_of(backbone, batch.input_ids, batch.attention_mask, batch.pixel_values)
    alone = logits_of(backbone, text.input_ids, text.attention_mask, None)
    torch.testing.assert_close(logits[:3], expert, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[3:], alone, atol=1e-5, rtol=1e-5)


def test_branch_without_features_raises(setup):
    backbone, _, _, batch = setup
    with pytest.raises(ValueError, match="image tokens"):
        joint_prefill(backbone, [Branch("bad", batch.input_ids, batch.attention_mask)])


def test_concat_rows_equals_joint_cache(setup):
    backbone, _, _, batch = setup
    joint = joint_prefill(backbone, [main_branch(batch), main_branch(batch)])
    a = joint_prefill(backbone, [main_branch(batch)])
    b = joint_prefill(backbone, [main_branch(batch)])
    merged = concat_rows([a.cache, b.cache], backbone.model.config)
    for x, y in zip(merged.layers, joint.cache.layers):
        torch.testing.assert_close(x.keys, y.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.values, y.values, atol=1e-5, rtol=1e-5)


class NaNDecoding(StepwiseDecoding):
    """Combine returns NaN for row 0 at step 1; the processors return NaN for every row at step 2."""

    name = "nan-test"

    def combine(self, logits, step):
        scores = logits[0].clone()
        if step == 1:
            scores[0] = float("nan")
        return scores

    def process(self, scores, history, step):
        return torch.full_like(scores, float("nan")) if step == 2 else scores

    def select(self, scores, generators):
        return scores.argmax(-1)


def test_nan_guard_counts_and_never_crashes(setup):
    backbone, _, _, batch = setup
    gen = decode_loop(NaNDecoding(), backbone, batch, SEEDS, 4)
    assert gen.guards == [2, 1, 1]
    assert gen.tokens == Greedy().generate(backbone, batch, SEEDS, 4).tokens  # guarded steps use the expert


def test_guard_scores_fallback_rules():
    scores = torch.tensor([[float("nan"), 1.0], [float("-inf"), float("-inf")], [0.0, float("inf")]])
    fallback = torch.tensor([[0.0, 2.0], [float("nan"), float("nan")], [1.0, 1.0]])
    out, bad = guard_scores(scores, fallback, eos=0)
    assert bad.tolist() == [True, True, False]
    assert out[0].tolist() == [0.0, 2.0]
    assert out[1].tolist() == [0.0, float("-inf")]  # fallback unusable too: one-hot EOS
    assert torch.isfinite(out[2]).all()


def test_methods_compose_with_a_lora_wrapped_model(setup):
    """Every baseline runs on a peft-wrapped backbone; a fresh LoRA (B=0) leaves the tokens unchanged."""
    from peft import get_peft_model

    from medbench.backbones.base import Backbone
    from medbench.methods.lora import LoRA

    plain, samples, images, batch = setup
    wrapped = Backbone(get_peft_model(tiny_backbone().model, LoRA(r=4).peft_config()), plain.processor,
                       plain.template, checkpoint_id="test+lora")
    for name, args in [("vcd", {"selection": "greedy"}), ("dola", {}), ("opera", {"max_new_tokens": 2}),
                       ("avisc", {"selection": "greedy"}), ("m3id", {"selection": "greedy"}),
                       ("damro", {"selection": "greedy"}), ("pai", {}), ("controlmllm", {"steps": 1})]:
        outs = []
        for bb in (plain, wrapped):
            method = METHODS.get(name)(**args)
            method.prepare(bb, samples[1:2], images[1:2])
            outs.append(method.generate(bb, select_rows(batch, [1]), SEEDS[1:2], 2).tokens)
        assert outs[0] == outs[1], name
