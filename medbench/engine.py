"""The decoding engine: one batched, left-padded, cached token loop for every step-wise method.

A step-wise method declares its *branches* (the main prompt plus, for contrastive methods, a
noised image, an image-free prompt, masked image tokens …) and a *combine* rule. All branch rows
ride in the same forward pass, each with its own cache rows; the chosen token is fed to every
branch. Sampling uses one ``torch.Generator`` per sample, seeded from (seed, task, sample id),
so outputs do not depend on batch size, order or resume.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

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
    """Model inputs of one branch for every sample of the batch (same row order)."""

    name: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None = None


def main_branch(batch: EncodedBatch) -> Branch:
    return Branch("main", batch.input_ids, batch.attention_mask, batch.pixel_values)


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


def guard_logits(logits: torch.Tensor, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace rows with NaN or no finite entry by ``fallback`` rows; return the rows guarded."""
    bad = torch.isnan(logits).any(-1) | ~torch.isfinite(logits).any(-1)
    if bad.any():
        logits = torch.where(bad[:, None], fallback, logits)
    logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
    return logits, bad


class StepwiseDecoding(DecodingMethod):
    """A decoding method driven by :func:`decode_loop`: branches → combine → select."""

    def branches(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> list[Branch]:
        return [main_branch(batch)]

    def combine(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        """Next-token scores [B, V] from each branch's logits (main branch first)."""
        return logits[0]

    @abstractmethod
    def select(self, scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Next token per row from the combined scores."""

    def generate(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int], max_new_tokens: int) -> Generation:
        return decode_loop(self, backbone, batch, seeds, max_new_tokens)


@torch.inference_mode()
def decode_loop(method: StepwiseDecoding, backbone: Backbone, batch: EncodedBatch, seeds: list[int],
                max_new_tokens: int) -> Generation:
    from transformers import DynamicCache

    model = backbone.model
    device = backbone.device
    batch = batch.to(device)
    branches = method.branches(backbone, batch, seeds)
    n_branch, n_rows = len(branches), batch.input_ids.shape[0]
    ids, mask, pixels = stack_branches(branches, backbone.pad_token_id)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, pixel_values=pixels,
                cache=cache, use_cache=True, logits_to_keep=1)
    eos, pad = backbone.eos_token_id, backbone.pad_token_id
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    guards = torch.zeros(n_rows, dtype=torch.long)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float().view(n_branch, n_rows, -1)
        per_branch = [logits[i] for i in range(n_branch)]
        scores = method.combine(per_branch, step)
        scores, bad = guard_logits(scores, per_branch[0])
        guards += bad.cpu().long()
        nxt = method.select(scores, generators).to(device)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        finished |= nxt == eos
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1)
        position = position[:, -1:] + 1
        out = model(input_ids=nxt.repeat(n_branch)[:, None], attention_mask=mask, position_ids=position,
                    cache=out.cache if getattr(out, "cache", None) is not None else cache, use_cache=True)
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


@torch.inference_mode()
def hf_generate(backbone: Backbone, batch: EncodedBatch, max_new_tokens: int, **kwargs) -> Generation:
    """Decoding through ``model.generate`` (beam search), answers cut at EOS."""
    batch = batch.to(backbone.device)
    out = backbone.model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
        max_new_tokens=max_new_tokens, pad_token_id=backbone.pad_token_id, eos_token_id=backbone.eos_token_id,
        **kwargs,
    )
    new = out[:, batch.input_ids.shape[1]:].tolist()
    rows = strip(new, backbone.eos_token_id, backbone.pad_token_id)
    return Generation(rows, [0] * len(rows))


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
