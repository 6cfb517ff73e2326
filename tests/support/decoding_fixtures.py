"""Shared helpers for the decoding-method tests: a random tiny LLaVA built in-process.

A plain module (not a conftest) so it composes with whatever fixtures other test files add.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from PIL import Image

from medbench.backbones.base import Backbone, EncodedBatch
from medbench.backbones.templates import TINY
from medbench.types import AnswerType, RoI, Sample

TEXTS = [
    "USER: <image>\nIs there a lesion in the left lung? ASSISTANT: yes",
    "what organ is shown in this image? the liver is shown",
    "is the heart enlarged? no, the heart size is normal",
    "describe the findings. a round bright mass in the upper right region",
    "which side is the abnormality on? left side of the chest",
] * 4

QUESTIONS = [
    "Is there a lesion?",
    "What organ is shown in this image of the chest?",
    "Describe the findings.",
]


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from medbench.backbones.tiny import train_tokenizer

    return train_tokenizer(TEXTS, vocab_size=300)


def tiny_backbone(seed: int = 0, scale: float = 1.5) -> Backbone:
    """A freshly initialised tiny LLaVA (fp32, CPU) with the medbench attention installed.

    Weight matrices are redrawn with std ``scale/sqrt(fan_in)`` so that a random model's
    answers depend on the image and the prompt instead of repeating one token.
    """
    from medbench.attention import install
    from medbench.backbones.tiny import build_random

    model, processor = build_random(_tokenizer(), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)
    model.eval()
    install(model)
    return Backbone(model, processor, TINY, checkpoint_id="test")


@functools.lru_cache(maxsize=1)
def shared_backbone() -> Backbone:
    """One tiny backbone per test process (tests must not modify it)."""
    return tiny_backbone()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(n)]


def samples(n: int = 3, roi: bool = False) -> list[Sample]:
    box = RoI(boxes=((20.0, 30.0, 120.0, 150.0),)) if roi else None
    return [Sample(id=f"s{i}", image_path="", question=QUESTIONS[i % len(QUESTIONS)], answer="yes",
                   answer_type=AnswerType.OPEN, split="test", roi=box) for i in range(n)]


def encode(backbone: Backbone, n: int = 3, roi: bool = False) -> tuple[list[Sample], list[Image.Image], EncodedBatch]:
    ss, ims = samples(n, roi), images(n)
    return ss, ims, backbone.encode_prompts(ss, ims)


def select_rows(batch: EncodedBatch, rows: list[int]) -> EncodedBatch:
    """A sub-batch with the common left padding removed (as if encoded alone)."""
    ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
    keep = mask.sum(0) > 0
    return EncodedBatch(ids[:, keep], mask[:, keep], batch.pixel_values[rows],
                        [batch.prompt_hashes[r] for r in rows])


SEEDS = [11, 22, 33]


def logits_of(backbone: Backbone, ids: torch.Tensor, mask: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
    """Last-position logits of an uncached forward."""
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = backbone.model(input_ids=ids, attention_mask=mask, position_ids=position, pixel_values=pixel_values)
    return out.logits[:, -1].float()


def recording(cls):
    """A subclass of ``cls`` that keeps every step's branch logits."""

    class Recording(cls):
        def combine(self, logits, step):
            self.seen = [*getattr(self, "seen", []), [x.clone() for x in logits]]
            return super().combine(logits, step)

    return Recording
