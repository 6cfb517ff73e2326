"""OPERA: over-trust score, tree probes, beam-search reduction and rollback bookkeeping."""

from __future__ import annotations

import pytest
import torch
from decoding_fixtures import SEEDS, select_rows

from medbench.backbones.base import Backbone
from medbench.engine import encode_images, hf_generate, image_inputs, joint_prefill, main_branch
from medbench.methods.opera import OPERA, overtrust
from medbench.types import AnswerType


def test_overtrust_hand_values():
    omega = torch.tensor([[[0.5, 0.0], [0.2, 0.8]]])
    rows = torch.tensor([[[0.1, 0.3, 0.6]]])
    phi, loc = overtrust(omega, rows, 10.0)
    cols = torch.tensor([5.0 * 2.0 * 1.0, 8.0 * 3.0, 6.0]) * 1e-7  # Π_{i≥j} σ·ω_ij per column j
    assert loc.item() == 1
    assert phi.item() == pytest.approx(float(cols.max()), rel=1e-6)


def test_overtrust_float16_overflows_to_inf_like_the_reference():
    """σ=50, column 0 = 0.9, 0.9 and the candidate's 0.9: Π = 45³ = 91125 > 65504 (float16's max)."""
    omega = torch.tensor([[[0.9, 0.0], [0.9, 0.1]]])
    rows = torch.tensor([[[0.9, 0.05, 0.05]]])
    phi32, loc32 = overtrust(omega, rows, 50.0)
    assert phi32.item() == pytest.approx(91125 * 1e-7, rel=1e-4) and loc32.item() == 0  # 1e-7·Π = 0.0091
    phi16, loc16 = overtrust(omega, rows, 50.0, "float16")
    assert torch.isinf(phi16).all() and loc16.item() == 0
    # below the overflow the float16 path rounds: column 1 = 5·2.5 → 1.25e-6 (a float16 subnormal)
    small = overtrust(omega[..., :, :], torch.tensor([[[0.0, 0.05, 0.05]]]), 50.0, "float16")[0]
    assert small.item() == float(torch.tensor(1.25e-6).half()) and small.item() != 1.25e-6
    tiny = overtrust(torch.zeros(1, 0, 0), torch.tensor([[[0.004]]]), 50.0, "float16")[0]
    assert tiny.item() == 0.0  # 1e-7·0.2 = 2e-8 is below half float16's smallest subnormal


def test_overflowed_candidates_fall_to_the_reference_floor():
    """All five candidates at φ=inf: −inf; every non-candidate at −999 is then equally likely."""
    vocab, beams = 12, 2
    logits = torch.randn(beams, vocab, generator=torch.Generator().manual_seed(0))
    cand_scores, cand = logits.topk(5, dim=-1)
    penalty = torch.full((beams, 5), float("inf"))
    penalty[1] = 0.01  # beam 1 keeps its candidates
    ref = OPERA(variant="reference").candidate_scores(logits, cand, cand_scores, penalty)
    assert torch.isneginf(ref[0, cand[0]]).all()
    others = torch.ones(vocab, dtype=torch.bool)
    others[cand[0]] = False
    torch.testing.assert_close(ref[0, others], torch.full((vocab - 5,), -torch.log(torch.tensor(7.0)).item()))
    assert torch.isfinite(ref[1, cand[1]]).all() and bool((ref[1, cand[1]] > -50).all())
    default = OPERA().candidate_scores(logits, cand, cand_scores, penalty)
    assert torch.isneginf(default[0]).all()  # beam 0 dies for this step; beam 1 is unchanged
    torch.testing.assert_close(default[1, cand[1]], torch.log_softmax(cand_scores[1] - 0.01 * 1.0, -1))
    assert OPERA(variant="reference").params.overtrust_dtype == "float16"
    assert OPERA(variant="a3tune").params.overtrust_dtype == "float16"
    assert OPERA().params.overtrust_dtype == "float32"


def test_reference_rollback_rule_by_hand():
    """r* from the current beams' modes; per-slot records; counts spent before the window test."""
    method = OPERA(variant="reference", window_size=16, num_attn_candidates=2)
    slots = torch.tensor([[12, 12, 3], [12, 5, 12], [4, 12, 12]])  # each slot: 12 twice
    modes = torch.tensor([12, 12, 7])
    used: dict = {}
    # prompt 100, response start 100, step t=20: r*=12 → position 13 → step 13
    assert method.reference_rollback_target(slots, modes, 100, 100, 20, 1, used) == 13
    assert method.reference_rollback_target(slots, modes, 100, 100, 20, 1, used) == 13
    assert method.reference_rollback_target(slots, modes, 100, 100, 20, 1, used) == 12  # 13 used N_can times
    assert method.reference_rollback_target(slots, modes, 100, 100, 20, 1, used) == 12
    assert method.reference_rollback_target(slots, modes, 100, 100, 20, 1, used) is None
    assert used == {13: 2, 12: 2}
    assert method.reference_rollback_target(slots, modes, 100, 100, 20, 2, {}) is None  # not > threshold
    assert method.reference_rollback_target(slots, torch.tensor([12, 7, 7]), 100, 100, 20, 1, {}) is None  # r*=7<10
    far: dict = {}
    assert method.reference_rollback_target(slots, modes, 100, 100, 29, 1, far) is None  # 29−13 ≥ window 16
    assert far == {13: 1}  # the count is spent before the window test
    assert method.reference_rollback_target(slots, modes, 100, 100, 28, 1, {}) == 13
    assert method.reference_rollback_target(slots, modes, 100, 100, 13, 1, {}) == 12  # at most the previous step
    assert method.reference_rollback_target(slots, modes, 90, 100, 15, 1, {}) == 3  # window starts 10 early
    short: dict = {}
    assert OPERA(variant="reference", window_size=13).reference_rollback_target(slots, modes, 100, 100, 20, 1,
                                                                                  short) is None
    assert short == {}  # position 13 is past the reference's 13-entry counter
    # the default takes r* from the last lineage record and may re-select the current step
    lineage = OPERA(window_size=8, num_attn_candidates=2)
    assert lineage.rollback_target(torch.tensor([[12, 12], [12, 12], [12, 12]]), 100, 100, 13, 1, {}) == 13


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



class V1Like(Backbone):
    a3tune_wiring = "v1"


def test_a3tune_wiring_from_the_image_span(setup):
    """A3Tune's hard-coded positions through the span: v1.5 R = P−(N−1), v1 R = P+N, slice N+1 long."""
    backbone, _, _, batch = setup
    v1 = V1Like(backbone.model, backbone.processor, backbone.template, checkpoint_id="v1-like")
    span = torch.arange(7, 7 + 64)
    start, cols = OPERA().key_positions(backbone, span, 90)
    assert start == 90 and torch.equal(cols, span)
    start, cols = OPERA(variant="a3tune").key_positions(backbone, span, 90)
    assert start == 90 - 63 and torch.equal(cols, torch.arange(7, 72))
    start, cols = OPERA(variant="a3tune").key_positions(v1, span, 90)
    assert start == 90 + 64 and torch.equal(cols, torch.arange(7, 72))
    assert OPERA(variant="a3tune").new_tokens(backbone) == 128 and OPERA(variant="a3tune").new_tokens(v1) == 512
    assert OPERA(variant="a3tune", max_new_tokens=7).new_tokens(v1) == 7 and OPERA().new_tokens(v1) is None
    bound = OPERA(variant="a3tune")
    bound.bind(v1)
    assert bound.resolved_args()["max_new_tokens"] == 512
    ids, pixels = single(backbone, batch, 0)
    tokens, _ = OPERA(variant="a3tune", max_new_tokens=4, num_beams=2).decode_one(v1, ids, pixels, 4)
    assert 0 < len(tokens) <= 4  # the window is still empty: only the image bonus applies


class SlotWatch(OPERA):
    def reference_rollback_target(self, slots, modes, start, prompt, t, threshold, used):
        self.seen = [*getattr(self, "seen", []), (slots.clone(), modes.clone())]
        return super().reference_rollback_target(slots, modes, start, prompt, t, threshold, used)


def test_reference_records_stay_in_their_slots_and_omega_is_not_cut(setup):
    backbone, _, _, batch = setup
    method = SlotWatch(variant="reference", threshold=1000, num_beams=3, num_attn_candidates=3)
    ids, pixels = single(backbone, batch, 1)
    method.decode_one(backbone, ids, pixels, 8)
    assert len(method.seen) >= 5
    for (before, _), (after, modes) in zip(method.seen, method.seen[1:]):
        assert torch.equal(after[:, :-1], before) and torch.equal(after[:, -1], modes)  # appended, never permuted
    assert OPERA(window_size=4).window_start(10) == 7 and OPERA(variant="reference", window_size=4).window_start(10) == 0


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


class Traced(OPERA):
    """Records, per sample, every step's logits and the rows of each feed forward; can force one rollback.

    ``force`` = (prompt length, at, to): the sample with that prompt rolls back from response step
    ``at`` to ``to`` once (through whichever rollback rule the variant uses); no other sample does.
    """

    force: tuple[int, int, int] | None = None

    def advance(self, backbone, s, full, cand, cand_scores, cand_rows, max_new):
        self.order = getattr(self, "order", {})
        self.seen = getattr(self, "seen", {})
        k = self.order.setdefault(id(s), len(self.order))
        self.seen.setdefault(k, []).append(s.logits.clone())
        return super().advance(backbone, s, full, cand, cand_scores, cand_rows, max_new)

    def forced(self, prompt, t, used):
        if self.force and prompt == self.force[0] and t == self.force[1] and not used:
            used[-1] = 1
            return self.force[2]
        return None

    def rollback_target(self, records, start, prompt, t, threshold, used):
        forced = self.forced(prompt, t, used)
        return forced if forced is not None else super().rollback_target(records, start, prompt, t, threshold, used)

    def reference_rollback_target(self, slots, modes, start, prompt, t, threshold, used):
        forced = self.forced(prompt, t, used)
        if forced is not None:
            return forced
        return super().reference_rollback_target(slots, modes, start, prompt, t, threshold, used)

    def feed(self, backbone, state, new):
        self.feeds = [*getattr(self, "feeds", []), (len(new), state.valid.shape[0], max(x.shape[1] for x in new))]
        return super().feed(backbone, state, new)


def batched_and_alone(backbone, batch, args, steps, force=None):
    """The batch decoded at once and each sample alone (a batch of one, padding removed)."""
    together = Traced(**args)
    together.force = force
    gen = together.generate(backbone, batch, SEEDS, steps)
    alone = []
    for i in range(batch.input_ids.shape[0]):
        one = Traced(**args)
        one.force = force
        alone.append((one, one.generate(backbone, select_rows(batch, [i]), SEEDS[:1], steps)))
    return together, gen, alone


def assert_same_as_alone(together, gen, alone, n_beams):
    for i, (one, solo) in enumerate(alone):
        assert gen.tokens[i] == solo.tokens[0] and gen.guards[i] == solo.guards[0]
        assert together.last_rollbacks[i] == one.last_rollbacks[0]
        mine, ref = together.seen[i], one.seen[0]
        assert len(mine) == len(ref)  # the same beam steps, rollbacks included
        for a, b in zip(mine, ref):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)  # padding: float noise only
    for samples, rows, _ in together.feeds:
        assert rows == samples * n_beams  # only unfinished samples' beams are fed


@pytest.mark.parametrize("args", [
    {"threshold": 0, "scale_factor": 1.0, "num_beams": 2, "num_attn_candidates": 2},
    {"variant": "reference", "threshold": 0, "scale_factor": 1.0, "num_beams": 2, "num_attn_candidates": 2},
], ids=["lineage", "reference"])
def test_batched_equals_one_by_one_with_natural_rollbacks(setup, args):
    """Prompts of different lengths, left-padded in one batch: the same tokens, guards and rollbacks as alone."""
    backbone, _, _, batch = setup
    assert len(set(batch.attention_mask.sum(-1).tolist())) == 3  # three prompt lengths
    together, gen, alone = batched_and_alone(backbone, batch, args, 12)
    if args.get("variant") != "reference":  # the reference rule rolls back too rarely here; its forced case is below
        assert sum(together.last_rollbacks) > 0
    assert_same_as_alone(together, gen, alone, args["num_beams"])


@pytest.mark.parametrize("variant", ["default", "a3tune"])
def test_batched_rollback_in_one_sample_only(setup, variant):
    """One sample rolls back (re-encodes its response) while the others feed masked padding in the same forward.

    ``default`` uses the lineage rule, ``a3tune`` the reference rule with A3Tune's wiring (window
    start inside the image: several prefill rows per sample, at different padding offsets).
    """
    backbone, _, _, batch = setup
    lengths = batch.attention_mask.sum(-1).tolist()
    target = lengths[1]
    args = {"variant": variant, "threshold": 1000, "num_beams": 3, "num_attn_candidates": 3, "max_new_tokens": 6}
    together, gen, alone = batched_and_alone(backbone, batch, args, 6, force=(target, 4, 2))
    assert together.last_rollbacks == [int(n == target) for n in lengths]
    assert any(width > 1 and samples > 1 for samples, _, width in together.feeds)  # a mixed forward ran
    assert_same_as_alone(together, gen, alone, 3)
