"""The decoding engine's primitives on a random tiny Llava: equivalence with HF generate, per-sample
seeds, top-p, attention capture equal to eager attention, logit guards, image tokens. (Batch
invariance of every method and the decode loop's NaN guard: test_method_composition.py.)"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from medbench import engine
from medbench.methods.greedy import Greedy
from medbench.methods.nucleus import Nucleus, top_p_filter
from medbench.types import AnswerType, Sample

QUESTIONS = ["is there a liver?", "what modality is this image here?", "ct", "is the lesion in the liver large?"]


def _inputs(n: int):
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((96, 120, 3)) * 255).astype(np.uint8)) for _ in range(n)]
    samples = [Sample(f"s{i}", "unused", QUESTIONS[i % len(QUESTIONS)], "yes", AnswerType.CLOSED, "test")
               for i in range(n)]
    return samples, images


def test_greedy_matches_hf_generate(random_backbone):
    b = random_backbone
    samples, images = _inputs(3)
    batch = b.encode_prompts(samples, images)
    ours = Greedy().generate(b, batch, [0, 0, 0], 6).tokens
    with torch.inference_mode():
        out = b.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               pixel_values=batch.pixel_values, max_new_tokens=6, do_sample=False,
                               pad_token_id=b.pad_token_id, eos_token_id=b.eos_token_id)
    theirs = engine.strip(out[:, batch.input_ids.shape[1]:].tolist(), b.eos_token_id, b.pad_token_id)
    assert ours == theirs


def test_nucleus_depends_on_seed_only(random_backbone):
    b = random_backbone
    samples, images = _inputs(1)
    batch = b.encode_prompts(samples, images)
    runs = {tuple(Nucleus(top_p="1.0").generate(b, batch, [s], 8).tokens[0]) for s in range(6)}
    assert len(runs) > 1
    assert Nucleus().generate(b, batch, [5], 8).tokens == Nucleus().generate(b, batch, [5], 8).tokens


def test_top_p_filter_hand_computed():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(scores, 0.8))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(scores, 0.81)).sum() == 3
    assert torch.isfinite(top_p_filter(scores, 0.01)).sum() == 1


def test_attention_capture_equals_eager(random_backbone):
    b = random_backbone
    samples, images = _inputs(2)
    batch = b.encode_prompts(samples, images)
    answers = [[5, 6, 7], [8]]
    maps = engine.answer_attention(b, batch, answers)
    b.model.set_attn_implementation({"text_config": "eager"})
    try:
        for i, ans in enumerate(answers):
            single = b.encode_prompts([samples[i]], [images[i]])
            ids = torch.cat([single.input_ids, torch.tensor([ans])], 1)
            with torch.no_grad():
                out = b.model(input_ids=ids, pixel_values=single.pixel_values, output_attentions=True)
            att = torch.stack([a[0] for a in out.attentions])  # layers, heads, q, k
            width = single.input_ids.shape[1]
            cols = b.image_token_mask(single.input_ids)[0].nonzero()[:, 0]
            ref = att[:, :, width - 1 : width - 1 + len(ans)][..., cols].mean((0, 1, 2))
            g = b.grid_size
            np.testing.assert_allclose(maps[i], ref.view(g, g).numpy(), rtol=1e-4, atol=1e-7)
    finally:
        from medbench import attention

        attention.install(b.model)


def test_empty_answer_has_no_map(random_backbone):
    samples, images = _inputs(2)
    batch = random_backbone.encode_prompts(samples, images)
    maps = engine.answer_attention(random_backbone, batch, [[], [40, 50]])
    assert maps[0] is None and maps[1].shape == (random_backbone.grid_size,) * 2


def test_medbench_attention_output_matches_sdpa(random_backbone):
    b = random_backbone
    samples, images = _inputs(2)
    batch = b.encode_prompts(samples, images)
    with torch.no_grad():
        ours = b.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values=batch.pixel_values).logits
        b.model.set_attn_implementation({"text_config": "sdpa"})
        ref = b.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      pixel_values=batch.pixel_values).logits
    from medbench import attention

    attention.install(b.model)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ours[mask], ref[mask], rtol=1e-4, atol=1e-5)


def test_guard_replaces_nan_rows():
    scores = torch.tensor([[float("nan"), 1.0], [0.5, 2.0], [float("-inf"), float("-inf")]])
    fallback = torch.tensor([[3.0, 1.0], [0.0, 0.0], [0.0, 9.0]])
    fixed, bad = engine.guard_logits(scores, fallback)
    assert bad.tolist() == [True, False, True]
    assert fixed.argmax(-1).tolist() == [0, 1, 1]
    assert torch.isfinite(fixed).any(-1).all()


def test_image_tokens_from_ids(random_backbone):
    samples, images = _inputs(3)
    batch = random_backbone.encode_prompts(samples, images)
    counts = random_backbone.image_token_mask(batch.input_ids).sum(1)
    assert counts.tolist() == [random_backbone.grid_size ** 2] * 3
    assert (batch.attention_mask[:, -1] == 1).all()  # left padding


def test_image_placeholder_is_never_generated(random_backbone):
    """Even when it scores highest, the placeholder is suppressed (it would break the map pass)."""
    b = random_backbone

    class PlaceholderLover(Greedy):
        def combine(self, logits, step):
            boosted = logits[0].clone()
            boosted[:, b.image_token_id] += 1e4
            return boosted

    samples, images = _inputs(2)
    batch = b.encode_prompts(samples, images)
    rows = PlaceholderLover().generate(b, batch, [0, 1], 5).tokens
    assert rows and all(b.image_token_id not in r for r in rows)
    plain = Greedy().generate(b, batch, [0, 1], 5).tokens
    hf = engine.hf_generate(b, batch, 5, do_sample=False).tokens
    assert hf == plain and all(b.image_token_id not in r for r in hf)
    maps = engine.answer_attention(b, batch, rows)
    assert len(maps) == 2
