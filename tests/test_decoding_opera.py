"""OPERA: over-trust score, tree probes, beam-search reduction and rollback bookkeeping."""

from __future__ import annotations

import pytest
import torch
from decoding_fixtures import SEEDS, encode, select_rows, shared_backbone

from medbench.engine import encode_images, hf_generate, image_inputs, joint_prefill, main_branch
from medbench.methods.opera import OPERA, overtrust
from medbench.types import AnswerType


@pytest.fixture(scope="module")
def setup():
    backbone = shared_backbone()
    samples, images, batch = encode(backbone, 3)
    return backbone, samples, images, batch


def test_overtrust_hand_values():
    omega = torch.tensor([[[0.5, 0.0], [0.2, 0.8]]])
    rows = torch.tensor([[[0.1, 0.3, 0.6]]])
    phi, loc = overtrust(omega, rows, 10.0, half=False)
    cols = torch.tensor([5.0 * 2.0 * 1.0, 8.0 * 3.0, 6.0]) * 1e-7  # Π_{i≥j} σ·ω_ij per column j
    assert loc.item() == 1
    assert phi.item() == pytest.approx(float(cols.max()), rel=1e-6)
    big = overtrust(omega * 1e6, rows, 10.0, half=True)[0]
    assert torch.isinf(big).all()  # the reference's float16 buffer saturates


def single(backbone, batch, i=0):
    keep = batch.attention_mask[i].bool()
    return batch.input_ids[i][keep][None], batch.pixel_values[i:i + 1]


def prefilled(backbone, ids, pixels, beams):
    from medbench.backbones.base import EncodedBatch

    one = EncodedBatch(ids, torch.ones_like(ids), pixels, [""])
    state = joint_prefill(backbone, [main_branch(one)])
    state.cache.batch_repeat_interleave(beams)
    return state


def test_tree_probe_equals_sequential_probes_and_leaves_cache(setup):
    backbone, _, _, batch = setup
    ids, pixels = single(backbone, batch)
    n = ids.shape[1]
    method = OPERA()
    state = prefilled(backbone, ids, pixels, 2)
    cand = torch.tensor([[5, 9, 17], [5, 33, 40]])
    with torch.no_grad():
        tree = method.probe(backbone, state.cache, cand, n)
        assert state.cache.get_seq_length() == n
        for c in range(3):
            _, rows = method.forward(backbone, cand[:, c:c + 1], torch.ones(2, n + 1, dtype=torch.long),
                                     torch.full((2, 1), n), state.cache, torch.full((2, 1), n), n + 1)
            state.cache.crop(-1)
            torch.testing.assert_close(tree[:, c], rows[:, 0], atol=1e-5, rtol=1e-4)
        nxt = backbone.model(input_ids=cand[:, :1], attention_mask=torch.ones(2, n + 1, dtype=torch.long),
                             position_ids=torch.full((2, 1), n), cache=state.cache).logits[:, -1]
        fresh = prefilled(backbone, ids, pixels, 2)
        ref = backbone.model(input_ids=cand[:, :1], attention_mask=torch.ones(2, n + 1, dtype=torch.long),
                             position_ids=torch.full((2, 1), n), cache=fresh.cache).logits[:, -1]
    torch.testing.assert_close(nxt, ref, atol=1e-5, rtol=1e-5)


def test_no_penalty_full_logprobs_equals_hf_beam_search(setup):
    backbone, _, _, batch = setup
    method = OPERA(num_beams=3, penalty_weights=0.0, threshold=1000, candidate_logprobs="full",
                   num_attn_candidates=6)
    ours = method.generate(backbone, batch, SEEDS, 5).tokens
    hf = hf_generate(backbone, batch, 5, num_beams=3, do_sample=False, early_stopping=False, length_penalty=1.0).tokens
    assert ours == hf


class Instrumented(OPERA):
    """Counts rollbacks; optionally forces one (at response step ``at``, back to ``to``)."""

    force: tuple[int, int] | None = None

    def rollback_target(self, records, start, prompt, t, threshold, used):
        self.calls = getattr(self, "calls", 0) + 1
        if self.force and t == self.force[0] and not used:
            return self.force[1]
        target = super().rollback_target(records, start, prompt, t, threshold, used)
        self.fired = getattr(self, "fired", 0) + (target is not None)
        return target

    def restore(self, history, target, pre, n_beams):
        state = super().restore(history, target, pre, n_beams)
        self.restored = (state[0].clone(), history[target].parents.clone(), history[target].tokens.clone())
        return state

    def beam_step(self, logprobs, running, seqs, t, max_new, finished, is_open, eos):
        out = super().beam_step(logprobs, running, seqs, t, max_new, finished, is_open, eos)
        self.steps = [*getattr(self, "steps", []), (t, seqs.clone(), out[0].clone(), out[1].clone())]
        return out

    def forward(self, backbone, ids, mask, position, cache, queries, n_keys, **kwargs):
        out, rows = super().forward(backbone, ids, mask, position, cache, queries, n_keys, **kwargs)
        if ids.shape[1] > 1 and mask.dim() == 2 and not kwargs:
            self.reencoded = (ids.clone(), out.logits[:, -1].clone())
        return out, rows


def test_rollback_never_fires_below_threshold(setup):
    backbone, _, _, batch = setup
    method = Instrumented(threshold=12, scale_factor=1.0, num_beams=2, num_attn_candidates=2)  # σ=1: newest column
    ids, pixels = single(backbone, batch, 1)
    method.decode_one(backbone, ids, pixels, 12)
    assert method.calls > 0 and method.fired == 0


def test_forced_rollback_restores_state_bans_pairs_and_reencodes(setup):
    backbone, _, _, batch = setup
    method = Instrumented(threshold=1000, num_beams=3, num_attn_candidates=3)
    method.force = (4, 2)
    ids, pixels = single(backbone, batch, 1)
    tokens, _ = method.decode_one(backbone, ids, pixels, 6)
    seqs, old_parents, old_tokens = method.restored
    before = [s for s in method.steps if s[0] == 1][0]
    after = [s for s in method.steps if s[0] == 2]
    rebuilt = torch.cat([before[1][before[2]], before[3][:, None]], dim=1)  # beams after step 1
    assert torch.equal(seqs, rebuilt)
    tried = set(zip(old_parents.tolist(), old_tokens.tolist()))
    retry = after[-1]
    assert not tried & set(zip(retry[2].tolist(), retry[3].tolist()))
    prompt_ids = ids.expand(3, -1)
    reenc_ids, reenc_logits = method.reencoded
    full = torch.cat([prompt_ids, reenc_ids], 1)
    feats = encode_images(backbone.model, pixels.expand(3, -1, -1, -1))
    with torch.no_grad():
        ref = backbone.model(input_ids=full, attention_mask=torch.ones_like(full),
                             **image_inputs(feats.reshape(-1, feats.shape[-1]))).logits[:, -1]
    torch.testing.assert_close(reenc_logits, ref, atol=1e-4, rtol=1e-4)
    assert 0 < len(tokens) <= 6


def test_natural_rollback_and_variants_complete(setup):
    backbone, samples, images, batch = setup
    method = Instrumented(threshold=0, scale_factor=1.0, num_beams=2, num_attn_candidates=2)
    ids, pixels = single(backbone, batch, 1)
    tokens, _ = method.decode_one(backbone, ids, pixels, 13)
    assert len(tokens) <= 13 and method.fired > 0
    for variant in ("reference", "a3tune"):
        gen = OPERA(variant=variant, max_new_tokens=2).generate(backbone, select_rows(batch, [0]), SEEDS[:1], 2)
        assert len(gen.tokens) == 1 and len(gen.tokens[0]) <= 2
    assert OPERA(variant="a3tune").params.max_new_tokens == 128


def test_sigma_threshold_defaults(setup):
    backbone, samples, images, _ = setup
    method = OPERA()
    method.prepare(backbone, samples, images)
    assert method.settings(backbone) == (50.0, 15)
    report = [s.__class__(**{**s.__dict__, "answer_type": AnswerType.REPORT}) for s in samples]
    method.prepare(backbone, report, images)
    assert method.settings(backbone) == (50.0, 15)  # only LLaVA-Med v1.5 reports use 25/25

    class V15:
        name = "llava-med-v1.5"

    assert method.settings(V15()) == (25.0, 25)
    assert OPERA(scale_factor=30, threshold=7).settings(V15()) == (30.0, 7)
