"""DAMRO — Dive into the Attention Mechanism to Reduce Object hallucination (Gong et al., EMNLP 2024).

* Outliers (DAMRO §3): in the vision-tower layer whose output LLaVA uses
  (``encoder.layers[vision_feature_layer]``, i.e. ``layers[-2]``), recompute
  ``x = layer_norm1(hidden_states[-3])``, ``Q = q_proj(x)``, ``K = k_proj(x)`` and
  ``A = softmax(QKᵀ/sqrt(d_model))`` as one head over the full width; ``O = topk(A[CLS, patches], k)``
  in rank order (``order=raster`` sorts by position). The vision hidden states and the projected
  features come from one ``get_image_features`` call; projected rows are gathered directly
  (the projector is token-wise).
* Contrast row: the image span replaced by the ``k`` projected outlier features (length
  ``L − N + k``, left-padded), in the same batched forward as the expert rows.
* Rule (DAMRO Eq. 5): ``s = (1+α)·l − α·l'`` on ``V_head(β)``, then processors and sampling.

Defaults (paper App. B): k=10, α=0.5, β=0.1, sampling at T=1, top-p 1.
Variants: ``reference`` skips every processor ("direct sample", identical under the defaults;
the reference argparse default is α=2, README α 0.5–2, k 4–10: set them explicitly);
``medheval`` follows MedHEval's port: last ViT layer, head-mean CLS attention, top-10, and a
same-length contrast row whose other image embeddings are zeroed.
With ``k = N`` and raster order the contrast row equals the expert, so ``s = l``.

A³TUNE's DAMRO column: A3Tune's v1.5 evaluation script has no ``damro`` generate branch (its
``use_damro`` sampler branch is never requested), so ``--baseline damro`` falls through to the
final ``generate(do_sample=True, temperature=0.7, top_p=None, max_new_tokens=1024)``: plain
sampling at T=0.7 with transformers' default top-k 50 and no contrast row. Variant ``a3tune``
(``contrast_row=false``, T=0.7, top-k 50) reproduces that call so that results can be set beside
the paper's DAMRO column; the token budget stays the task's. As released, that script first
installs AvisC's sampler, whose ``use_avisc`` defaults to True, so the fall-through call enters
the AvisC branch without ``layer_gamma`` and stops at ``float(None)``: the published column cannot
come from the released code unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Branch, left_pad, main_branch
from medbench.method import Range
from medbench.methods.contrastive import (
    BaselineDecoding,
    DecodingParams,
    base_model,
    contrast,
    image_positions,
)


@dataclass(frozen=True)
class DAMROParams(DecodingParams):
    BASE: ClassVar[dict] = {"contrast_row": True}
    PRESETS: ClassVar[dict] = {"reference": {}, "medheval": {},
                               "a3tune": {"contrast_row": False, "temperature": 0.7, "top_k": 50}}
    RANGES: ClassVar[dict[str, Range]] = {"k": Range(lo=1)}

    variant: Literal["default", "reference", "medheval", "a3tune"] = "default"
    k: int = 10
    alpha: float = 0.5
    beta: float = 0.1
    order: Literal["rank", "raster"] = "rank"
    contrast_row: bool | None = None


def vision_encoder_layers(model: Any) -> Any:
    """The vision tower's transformer layers (CLIP-style ``vision_model.encoder.layers``)."""
    tower = base_model(model).model.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers


def cls_attention(layer: Any, hidden: torch.Tensor, per_head: bool) -> torch.Tensor:
    """CLS-row attention [B, T−1] on the patches: one head over d_model, or the head mean."""
    x = layer.layer_norm1(hidden)
    q, k = layer.self_attn.q_proj(x).float(), layer.self_attn.k_proj(x).float()
    if not per_head:
        scores = q[:, :1] @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        return scores.softmax(-1)[:, 0, 1:]
    heads = layer.self_attn.num_heads
    b, t, d = q.shape
    qh = q.view(b, t, heads, d // heads).transpose(1, 2)[:, :, :1]
    kh = k.view(b, t, heads, d // heads).transpose(1, 2)
    probs = (qh @ kh.transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
    return probs.mean(1)[:, 0, 1:]


def outlier_tokens(model: Any, pixel_values: torch.Tensor, k: int, last_layer: bool, order: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected features [B, N, D], outlier indices [B, k]) from one vision pass."""
    out = base_model(model).get_image_features(pixel_values=pixel_values, output_hidden_states=True)
    features = torch.stack(list(out.pooler_output))
    states, layers = out.hidden_states, vision_encoder_layers(model)
    config = base_model(model).config
    if last_layer:
        index = len(layers) - 1
    else:
        index = config.vision_feature_layer % len(states) - 1
    attn = cls_attention(layers[index], states[index], per_head=last_layer)
    shift = 0 if config.vision_feature_select_strategy == "default" else 1
    k = min(k, features.shape[1] - shift, attn.shape[-1])
    idx = attn.topk(k, dim=-1).indices + shift
    if order == "raster":
        idx = idx.sort(dim=-1).values
    return features, idx


class DAMRO(BaselineDecoding):
    name = "damro"
    label = "DAMRO"
    Params = DAMROParams
    cutoff = "beta"

    def branches(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> list[Branch]:
        p = self.params
        if not p.contrast_row:
            return [main_branch(batch)]
        medheval = p.variant == "medheval"
        features, idx = outlier_tokens(backbone.model, batch.pixel_values, p.k, medheval, p.order)
        self.outliers = idx
        main = Branch("main", batch.input_ids, batch.attention_mask, image_features=features)
        if medheval:
            keep = torch.zeros(features.shape[:2], dtype=features.dtype, device=features.device)
            keep.scatter_(1, idx, 1.0)
            return [main, Branch("outliers", batch.input_ids, batch.attention_mask,
                                 image_features=features * keep[..., None])]
        picked = torch.gather(features, 1, idx[..., None].expand(-1, -1, features.shape[-1]))
        span = image_positions(backbone, batch.input_ids)
        rows = []
        for i in range(batch.input_ids.shape[0]):
            ids = batch.input_ids[i]
            start, end = int(span[i, 0]), int(span[i, -1]) + 1
            first = int(batch.attention_mask[i].nonzero()[0])
            image = torch.full((idx.shape[1],), backbone.image_token_id, dtype=ids.dtype, device=ids.device)
            rows.append(torch.cat([ids[first:start], image, ids[end:]]))
        ids, mask = left_pad(rows, backbone.pad_token_id)
        return [main, Branch("outliers", ids, mask, image_features=picked)]

    def process(self, scores: torch.Tensor, history: torch.Tensor, step: int) -> torch.Tensor:
        if self.params.variant == "reference":
            return scores
        return super().process(scores, history, step)

    def combine(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        if not self.params.contrast_row:
            return logits[0]
        return contrast(logits[0], logits[1], self.params.alpha, self.params.beta)

    def fallback(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        return super().fallback(logits, step) if self.params.contrast_row else logits[0]
