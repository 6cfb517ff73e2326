"""M3ID — Multi-Modal Mutual-Information Decoding (Favero et al., CVPR 2024).

Rule (AvisC's re-implementation, which A3Tune ran; M3ID Eq. 7 without the gate):
``s = c + w_t·(c − u)`` with ``c = log_softmax(l)``, ``u = log_softmax(l')`` of the text-only row
(image-token ids deleted), ``γ_t = exp(−λt)``, ``w_t = (1−γ_t)/γ_t = e^{λt} − 1`` and t counting
generated tokens from 1; then APC(β) on ``l``, processors and sampling. With λ=0.02:
``w_1=0.02, w_10=0.22, w_50=1.72, w_100=6.39`` — short VQA answers are barely changed.

Defaults (paper App. B): λ=0.02, β=0.1, sampling (T=1, top-p 1). The text row has its own cache
(AvisC's stale-cache bug for that branch is not reproduced).
Variants: ``reference`` is the default (AvisC's hard-coded λ=0.02, β=0.1, sampling);
``paper`` adds the M3ID paper's confidence gate ``1[max c < log α_conf]`` (the contrast only
applies to low-confidence steps); ``alpha_conf`` is unverified and must be supplied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Branch, main_branch
from medbench.method import MethodArgsError, Range
from medbench.methods.contrastive import BaselineDecoding, DecodingParams, plausible, text_only_branch


@dataclass(frozen=True)
class M3IDParams(DecodingParams):
    PRESETS: ClassVar[dict] = {"reference": {}, "paper": {}}
    #: λ ≤ 1 keeps w_t = e^{λt} − 1 finite in float32 for the first 88 tokens (VQA answers get 16, reports 80).
    RANGES: ClassVar[dict[str, Range]] = {"lam": Range(0.0, 1.0), "alpha_conf": Range(0.0, 1.0, lo_open=True)}

    variant: Literal["default", "reference", "paper"] = "default"
    lam: float = 0.02
    beta: float = 0.1
    alpha_conf: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.variant == "paper" and self.alpha_conf is None:
            raise MethodArgsError("m3id variant=paper needs alpha_conf=<probability threshold in (0, 1]>")


def m3id_weight(lam: float, t: int) -> float:
    """``w_t = (1−γ_t)/γ_t = e^{λt} − 1`` with ``γ_t = exp(−λt)``."""
    return math.expm1(lam * t)


class M3ID(BaselineDecoding):
    name = "m3id"
    label = "M3ID"
    Params = M3IDParams
    cutoff = "beta"

    def branches(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> list[Branch]:
        return [main_branch(batch), text_only_branch(backbone, batch)]

    def combine(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        p = self.params
        c, u = F.log_softmax(logits[0], -1), F.log_softmax(logits[1], -1)
        scores = c + m3id_weight(p.lam, step + 1) * (c - u)
        if p.alpha_conf is not None:
            confident = c.max(-1, keepdim=True).values >= math.log(p.alpha_conf)
            scores = torch.where(confident, c, scores)
        return scores.masked_fill(~plausible(logits[0], p.beta), float("-inf"))
