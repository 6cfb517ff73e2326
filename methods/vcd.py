"""VCD — Visual Contrastive Decoding (Leng et al., CVPR 2024).

Rule (VCD Eq. 3–4): ``s = (1+α)·l − α·l'`` on the plausibility head ``V_head(β)`` of the
expert logits ``l``; ``l'`` are the logits of the same prompt on a diffusion-noised image
(Eq. 2, ``v' = sqrt(ᾱ_T)·v + sqrt(1−ᾱ_T)·ε``, ``β_k = sigmoid(linspace(−6,6,1000))·(5e-3−1e-5)+1e-5``,
``ᾱ = cumprod(1−β)``, T a 0-based index: T=500 gives 0.8630/0.5052). Raw logits, float32,
then processors, then sampling at T=1, top-p 1 (the reference's selection).

The noise is applied to the processor-normalised ``pixel_values``; ε is drawn once per sample
from a generator derived from the sample seed (CPU, float32), so the token generator is
untouched (α=0, β=0 sampling equals engine sampling with the same seed). The noised row has
its own cache rows (the reference's pre-c637c85 bug of reusing the clean cache is not
reproduced) and rides in the same batched forward as the clean row.

Defaults (paper App. B = reference = A3Tune): α=1, β=0.1, noise_step=500, sampling.
Variants: ``reference`` (identical to the default: the reference samples at T=1, p=1);
``a3tune`` keeps HF's default ``top_k=50`` as A3Tune's call does. ``selection=greedy`` gives the
greedy variant (not in the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Branch, main_branch
from medbench.method import Range
from medbench.methods.contrastive import BaselineDecoding, DecodingParams, contrast, derived_generator


def noise_schedule(steps: int = 1000) -> torch.Tensor:
    """ᾱ_k = Π_{i≤k}(1−β_i) of VCD's sigmoid schedule (float64)."""
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def add_diffusion_noise(pixel_values: torch.Tensor, noise_step: int, generators: list[torch.Generator]) -> torch.Tensor:
    """``sqrt(ᾱ_T)·v + sqrt(1−ᾱ_T)·ε`` per image, ε from that sample's generator (VCD Eq. 2)."""
    alpha_bar = float(noise_schedule()[noise_step])
    noise = torch.stack([torch.randn(tuple(pixel_values.shape[1:]), generator=g, dtype=torch.float32)
                         for g in generators]).to(pixel_values.device)
    noised = alpha_bar**0.5 * pixel_values.float() + (1 - alpha_bar) ** 0.5 * noise
    return noised.to(pixel_values.dtype)


@dataclass(frozen=True)
class VCDParams(DecodingParams):
    PRESETS: ClassVar[dict] = {"reference": {}, "a3tune": {"top_k": 50}}
    RANGES: ClassVar[dict[str, Range]] = {"noise_step": Range(0, 999)}

    variant: Literal["default", "reference", "a3tune"] = "default"
    alpha: float = 1.0
    beta: float = 0.1
    noise_step: int = 500


class VCD(BaselineDecoding):
    name = "vcd"
    label = "VCD"
    Params = VCDParams
    cutoff = "beta"

    def branches(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> list[Branch]:
        generators = [derived_generator(s, "vcd-noise") for s in seeds]
        noised = add_diffusion_noise(batch.pixel_values, self.params.noise_step, generators)
        main = main_branch(batch)
        return [main, Branch("noised", batch.input_ids, batch.attention_mask, noised)]

    def combine(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        return contrast(logits[0], logits[1], self.params.alpha, self.params.beta)
