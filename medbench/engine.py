"""The decoding engine: one batched, left-padded, cached token loop for every step-wise method.

A step-wise method declares its *branches* (the main prompt plus, for contrastive methods, a
noised image, an image-free prompt, masked image tokens …) and a *combine* rule. All branch rows
ride in the same forward pass, each with its own cache rows (branch-major: row = b·B + i); the
chosen token is fed to every branch. Sampling uses one ``torch.Generator`` per sample, seeded
from (seed, task, sample id), so outputs do not depend on batch size, order or resume.

Step order: combine (method rule, plausibility constraint included) → NaN/inf guard →
``process`` (repetition penalty, temperature, top-k, top-p) → guard → ``select``. A guarded row
falls back to the method's ``fallback``: the main branch's logits under the method's own
plausibility constraint (AvisC's NaN rule: contrast logits := main logits, then the cutoff).

Images are encoded by the engine itself (``get_image_features``) and handed to the model as
``mm_encoder_outputs``, so a branch may carry raw ``pixel_values`` (encoded in one batched
vision pass with the other branches) or ready ``image_features`` (zeroed, outlier-only or
offset embeddings). Llava scatters features into image-token positions in row order; a branch
without image tokens contributes no features.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medbench.attention import CaptureRequest, capture
from medbench.backbones.base import Backbone, EncodedBatch
from medbench.method import DecodingMethod


@dataclass
class Generation:
    """Decoded answer ids per sample (EOS and padding stripped) and NaN/inf guard counts."""

    tokens: list[list[int]]
    guards: list[int] = field(default_factory=list)


@dataclass
class Branch:
    """Model inputs of one branch for every sample of the batch (same row order).

    Image-token positions are filled from ``image_features`` ([B, N_b, D], projected) when given,
    otherwise from encoding ``pixel_values``; a branch without image tokens needs neither.
    """

    name: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_features: torch.Tensor | None = None


@dataclass
class Prefill:
    """State after the joint prefill: last-position logits of every row, cache, mask, positions."""

    out: Any
    cache: Any
    mask: torch.Tensor
    position: torch.Tensor
    n_branch: int


def main_branch(batch: EncodedBatch) -> Branch:
    return Branch("main", batch.input_ids, batch.attention_mask, batch.pixel_values)


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id rows left-padded to one width; returns (ids, attention mask)."""
    width = max(int(r.numel()) for r in rows)
    device = rows[0].device
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if r.numel():
            ids[i, width - r.numel():] = r
            mask[i, width - r.numel():] = 1
    return ids, mask


def stack_branches(branches: list[Branch], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Left-pad every branch to one width and stack them branch-major."""
    width = max(b.input_ids.shape[1] for b in branches)
    ids, masks, pixels = [], [], []
    for b in branches:
        extra = width - b.input_ids.shape[1]
        ids.append(torch.nn.functional.pad(b.input_ids, (extra, 0), value=pad_id))
        masks.append(torch.nn.functional.pad(b.attention_mask, (extra, 0), value=0))
        if b.pixel_values is not None:
            pixels.append(b.pixel_values)
    return torch.cat(ids), torch.cat(masks), (torch.cat(pixels) if pixels else None)


def encode_images(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features [B, N, D] (one vision pass), as Llava would scatter them."""
    features = model.get_image_features(pixel_values=pixel_values).pooler_output
    return torch.stack(list(features))


def branch_features(model: Any, branches: list[Branch], image_token_id: int) -> torch.Tensor | None:
    """Image features of all branch rows in branch-major order, flattened to [ΣN, D] (or None)."""
    pending = [b for b in branches if b.image_features is None and b.pixel_values is not None
               and bool((b.input_ids == image_token_id).any())]
    encoded: dict[int, torch.Tensor] = {}
    if pending:
        feats = encode_images(model, torch.cat([b.pixel_values for b in pending]))
        offset = 0
        for b in pending:
            encoded[id(b)] = feats[offset: offset + b.pixel_values.shape[0]]
            offset += b.pixel_values.shape[0]
    parts = []
    for b in branches:
        n_img = (b.input_ids == image_token_id).sum(-1)
        if not bool(n_img.any()):
            continue
        feats = b.image_features if b.image_features is not None else encoded.get(id(b))
        if feats is None:
            raise ValueError(f"branch {b.name!r} has image tokens but neither image_features nor pixel_values")
        for i in range(b.input_ids.shape[0]):
            if int(n_img[i]) != feats.shape[1] and int(n_img[i]) != 0:
                raise ValueError(f"branch {b.name!r} row {i}: {int(n_img[i])} image tokens, "
                                 f"{feats.shape[1]} features")
            if int(n_img[i]):
                parts.append(feats[i])
    return torch.cat(parts) if parts else None


def image_inputs(features: torch.Tensor | None) -> dict[str, Any]:
    """``mm_encoder_outputs`` kwarg that makes Llava scatter ``features`` into image tokens."""
    if features is None:
        return {}
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=[features])}}


def joint_prefill(backbone: Backbone, branches: list[Branch], **kwargs: Any) -> Prefill:
    """One forward over all branch rows (left-padded, branch-major) into a fresh cache."""
    from transformers import DynamicCache

    model = backbone.model
    ids, mask, _ = stack_branches(branches, backbone.pad_token_id)
    features = branch_features(model, branches, backbone.image_token_id)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache, use_cache=True,
                logits_to_keep=1, **image_inputs(features), **kwargs)
    cache = out.cache if getattr(out, "cache", None) is not None else cache
    return Prefill(out, cache, mask, position[:, -1:], len(branches))


def concat_rows(caches: list[Any], config: Any) -> Any:
    """A fresh cache holding the rows of ``caches`` (same width) one after another."""
    from transformers import DynamicCache

    data = []
    for layers in zip(*(c.layers for c in caches)):
        data.append((torch.cat([layer.keys for layer in layers]), torch.cat([layer.values for layer in layers])))
    return DynamicCache(data, config=config)


def guard_logits(logits: torch.Tensor, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace rows with NaN or no finite entry by ``fallback`` rows; return the rows guarded."""
    bad = torch.isnan(logits).any(-1) | ~torch.isfinite(logits).any(-1)
    if bad.any():
        logits = torch.where(bad[:, None], fallback, logits)
    logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
    return logits, bad


def guard_scores(scores: torch.Tensor, fallback: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`guard_logits`, then rows still unusable become a one-hot EOS row (ends that sample)."""
    scores, bad = guard_logits(scores, fallback)
    dead = ~torch.isfinite(scores).any(-1)
    if dead.any():
        stop = torch.full_like(scores, float("-inf"))
        stop[:, eos] = 0.0
        scores = torch.where(dead[:, None], stop, scores)
    return scores, bad | dead


def suppress_placeholder(scores: torch.Tensor, token_id: int) -> torch.Tensor:
    """Forbid the image placeholder token: it stands for image features and is never answer text.

    A sampled placeholder (possible at high temperature) would make the answer's teacher-forced
    attention pass see more placeholders than image features.
    """
    scores = scores.clone()
    scores[:, token_id] = float("-inf")
    return scores


class StepwiseDecoding(DecodingMethod):
    """A decoding method driven by :func:`decode_loop`: branches → combine → process → select."""

    def branches(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> list[Branch]:
        return [main_branch(batch)]

    def prefill(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> Prefill:
        """The first forward over every branch row (override for a staged prefill)."""
        with self.forward_context(0):
            return joint_prefill(backbone, self.branches(backbone, batch, seeds), **self.forward_kwargs())

    def forward_kwargs(self) -> dict[str, Any]:
        """Extra ``model(...)`` kwargs of every forward (e.g. ``output_hidden_states``)."""
        return {}

    def forward_context(self, step: int) -> contextlib.AbstractContextManager:
        """Context active around the forward whose logits choose token ``step`` (0 = prefill)."""
        return contextlib.nullcontext()

    def branch_logits(self, out: Any, n_branch: int) -> list[torch.Tensor]:
        """Float32 last-position logits [B, V] of each branch, main branch first."""
        logits = out.logits[:, -1].float()
        return list(logits.view(n_branch, logits.shape[0] // n_branch, -1).unbind(0))

    def combine(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        """Next-token scores [B, V] from each branch's logits (main branch first)."""
        return logits[0]

    def fallback(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        """Scores of a row whose combined scores are NaN/inf: the main branch's logits."""
        return logits[0]

    def process(self, scores: torch.Tensor, history: torch.Tensor, step: int) -> torch.Tensor:
        """Logits processors on combined scores; ``history`` holds the main rows' ids so far."""
        return scores

    @abstractmethod
    def select(self, scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Next token per row from the combined scores."""

    def generate(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int], max_new_tokens: int) -> Generation:
        return decode_loop(self, backbone, batch, seeds, max_new_tokens)


@torch.inference_mode()
def decode_loop(method: StepwiseDecoding, backbone: Backbone, batch: EncodedBatch, seeds: list[int],
                max_new_tokens: int) -> Generation:
    model = backbone.model
    device = backbone.device
    batch = batch.to(device)
    n_rows = batch.input_ids.shape[0]
    state = method.prefill(backbone, batch, seeds)
    out, cache, mask, position, n_branch = state.out, state.cache, state.mask, state.position, state.n_branch
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    eos, pad = backbone.eos_token_id, backbone.pad_token_id
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    history = batch.input_ids
    tokens: list[torch.Tensor] = []
    guards = torch.zeros(n_rows, dtype=torch.long)
    for step in range(max_new_tokens):
        per_branch = method.branch_logits(out, n_branch)
        fallback = method.fallback(per_branch, step)
        scores, bad = guard_scores(method.combine(per_branch, step), fallback, eos)
        processed = suppress_placeholder(method.process(scores, history, step), backbone.image_token_id)
        scores, bad2 = guard_scores(processed, fallback, eos)
        guards += (bad | bad2).cpu().long()
        nxt = method.select(scores, generators).to(device)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        history = torch.cat([history, nxt[:, None]], dim=1)
        finished |= nxt == eos
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1)
        position = position[:, -1:] + 1
        with method.forward_context(step + 1):
            out = model(input_ids=nxt.repeat(n_branch)[:, None], attention_mask=mask, position_ids=position,
                        cache=cache, use_cache=True, **method.forward_kwargs())
        cache = out.cache if getattr(out, "cache", None) is not None else cache
    return Generation(strip(torch.stack(tokens, 1).tolist() if tokens else [[]] * n_rows, eos, pad),
                      guards.tolist())


def strip(rows: list[list[int]], eos: int, pad: int) -> list[list[int]]:
    """Cut each row at its first EOS and drop padding."""
    out = []
    for row in rows:
        kept = []
        for t in row:
            if t == eos:
                break
            if t != pad:
                kept.append(t)
        out.append(kept)
    return out


@contextlib.contextmanager
def grad_enabled() -> Iterator[None]:
    """Autograd on, even inside an outer ``torch.inference_mode`` (inference-time optimisation)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


class NonFiniteGuard:
    """A transformers ``LogitsProcessor``: :func:`guard_scores` inside ``generate``, counted per sample.

    ``generate`` runs ``rows_per_sample`` rows per sample (beams); a row with NaN or no finite
    score becomes a one-hot EOS row (no fallback logits exist there) and counts for its sample.
    """

    def __init__(self, n_samples: int, rows_per_sample: int, eos: int) -> None:
        self.counts = [0] * n_samples
        self.rows_per_sample = rows_per_sample
        self.eos = eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        dead = torch.full_like(scores, float("nan"))
        scores, bad = guard_scores(scores, dead, self.eos)
        for row in bad.nonzero().flatten().tolist():
            self.counts[row // self.rows_per_sample] += 1
        return scores


@torch.inference_mode()
def hf_generate(backbone: Backbone, batch: EncodedBatch, max_new_tokens: int, **kwargs) -> Generation:
    """Decoding through ``model.generate`` (beam search), answers cut at EOS; non-finite scores guarded."""
    from transformers import LogitsProcessorList

    batch = batch.to(backbone.device)
    n = batch.input_ids.shape[0]
    guard = NonFiniteGuard(n, int(kwargs.get("num_beams", 1)), backbone.eos_token_id)
    out = backbone.model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
        max_new_tokens=max_new_tokens, pad_token_id=backbone.pad_token_id, eos_token_id=backbone.eos_token_id,
        suppress_tokens=[backbone.image_token_id], logits_processor=LogitsProcessorList([guard]), **kwargs,
    )
    new = out[:, batch.input_ids.shape[1]:].tolist()
    rows = strip(new, backbone.eos_token_id, backbone.pad_token_id)
    return Generation(rows, guard.counts)


@torch.inference_mode()
def answer_attention(backbone: Backbone, batch: EncodedBatch, answers: list[list[int]],
                     layers: set[int] | None = None) -> list[np.ndarray | None]:
    """Visual attention map (G×G) of each answer, averaged over layers, heads and answer rows.

    A teacher-forced pass over prompt + answer. The query rows are the positions that emitted
    each answer token (the last prompt position for the first token), EOS excluded; the key
    columns are the image tokens. Samples with an empty answer get ``None``.
    """
    device = backbone.device
    batch = batch.to(device)
    n_rows, width = batch.input_ids.shape
    longest = max((len(a) for a in answers), default=0)
    if longest == 0:
        return [None] * n_rows
    ans = torch.full((n_rows, longest), backbone.pad_token_id, dtype=torch.long)
    ans_mask = torch.zeros((n_rows, longest), dtype=torch.long)
    for i, a in enumerate(answers):
        if a:
            ans[i, : len(a)] = torch.tensor(a)
            ans_mask[i, : len(a)] = 1
    ids = torch.cat([batch.input_ids, ans.to(device)], 1)
    mask = torch.cat([batch.attention_mask, ans_mask.to(device)], 1)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    image_mask = backbone.image_token_mask(batch.input_ids)
    key_positions = image_mask.nonzero()[:, 1].view(n_rows, -1)
    query_positions = (width - 1 + torch.arange(longest, device=device)).expand(n_rows, longest)
    request = CaptureRequest(query_positions=query_positions, key_positions=key_positions, layers=layers)
    with capture(request):
        backbone.model(input_ids=ids, attention_mask=mask, position_ids=position,
                       pixel_values=batch.pixel_values, logits_to_keep=1)
    if not request.captured:
        raise RuntimeError("attention capture saw no layer: is the medbench attention function installed?")
    total = sum(request.captured.values())[:, 0]  # [B, Q, N], summed over heads and layers
    n_heads = backbone.text_config.num_attention_heads
    total = total / (len(request.captured) * n_heads)
    g = backbone.grid_size
    maps: list[np.ndarray | None] = []
    for i, a in enumerate(answers):
        if not a:
            maps.append(None)
            continue
        maps.append(total[i, : len(a)].mean(0).view(g, g).float().cpu().numpy())
    return maps
