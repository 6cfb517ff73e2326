"""Backbone adapter: loading, prompt template, preprocessing, RoI geometry, image-token span.

Every backbone (the embedded ``tiny-med-llava`` and real LLaVA checkpoints) is a
``LlavaForConditionalGeneration`` behind this one interface, so methods, the engine and the
evaluator never branch on the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from medbench.backbones.templates import PromptTemplate
from medbench.types import RoI, Sample


@dataclass
class EncodedBatch:
    """Left-padded prompts of one batch, ready for a forward pass."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    prompt_hashes: list[str]

    def to(self, device: torch.device | str) -> EncodedBatch:
        return EncodedBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.pixel_values.to(device),
            self.prompt_hashes,
        )


class Backbone:
    """A loaded Llava-family model with its processor and template."""

    name: ClassVar[str] = "llava"
    #: Learning rate of tuning methods when the user sets none (paper Appendix C: 2e-4).
    default_tuning_lr: ClassVar[float] = 2e-4
    #: Tuning defaults where the A³TUNE paper is silent: linear warm-up/decay, no gradient
    #: accumulation (``None``: a step is one ``batch_size`` batch), no dropout on the A³MoE experts
    #: — what the embedded ``tiny-med-llava`` is tuned with; real checkpoints (``LlavaBackbone``)
    #: take the reference code's cosine, effective batch 32 (``batch_size × grad_accum``) and 0.05.
    tuning_lr_schedule: ClassVar[str] = "linear"
    tuning_effective_batch: ClassVar[int | None] = None
    tuning_expert_dropout: ClassVar[float] = 0.0
    #: ControlMLLM's latent step size η when the user sets none (A³TUNE paper App. B: 1 for
    #: LLaVA-Med v1.5; LLaVA-Med v1 overrides it with 4).
    controlmllm_lr: ClassVar[float] = 1.0
    #: Which A³TUNE evaluation script's hard-coded positions the ``@a3tune`` decoding variants
    #: reproduce, expressed through the image span: "v1.5" (its ids hold one image sentinel) or
    #: "v1" (its ids hold all image patch tokens).
    a3tune_wiring: ClassVar[str] = "v1.5"

    def __init__(self, model: Any, processor: Any, template: PromptTemplate, *, checkpoint_id: str):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = template
        self.checkpoint_id = checkpoint_id

    # ---- ids and shapes ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model-input frame."""
        crop = self.processor.image_processor.crop_size
        return int(crop["height"]), int(crop["width"])

    @property
    def grid_size(self) -> int:
        """Side of the square visual-token grid."""
        vision = self.model.config.vision_config
        return int(vision.image_size // vision.patch_size)

    @property
    def text_config(self) -> Any:
        return self.model.config.text_config

    # ---- preprocessing ----------------------------------------------------------------------
    @staticmethod
    def load_image(path: str | Path) -> Image.Image:
        """The image as RGB; 16-bit and float images rescaled by their own range (:mod:`medbench.images`)."""
        from medbench.images import open_image

        return open_image(path)

    def prompt_text(self, sample: Sample) -> str:
        return self.template.render(sample.question, self.image_token)

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def tokenize_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt with the image placeholder expanded to the image-token count."""
        ids = self.tokenizer(text)["input_ids"]
        n_image = sum(1 for i in ids if i == self.image_token_id)
        if n_image != 1:
            raise ValueError(f"prompt must hold exactly one {self.image_token!r}, found {n_image}: {text!r}")
        return self._expand_image_token(ids)

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size * self.grid_size

    def _expand_image_token(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            out.extend([i] * self.num_image_tokens if i == self.image_token_id else [i])
        return out

    def encode_prompts(self, samples: list[Sample], images: list[Image.Image]) -> EncodedBatch:
        """Left-padded prompt ids, attention mask and pixel values for a batch."""
        from medbench.hashing import sha256_text

        seqs = [self.tokenize_prompt(self.prompt_text(s)) for s in samples]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        hashes = [sha256_text(self.prompt_text(s))[:16] for s in samples]
        return EncodedBatch(ids, mask, self.pixel_values(images), hashes)

    def encode_answer(self, answer: str) -> list[int]:
        """Token ids of a training target (answer + end-of-sequence), without a BOS."""
        return self.tokenizer(self.template.target(answer), add_special_tokens=False)["input_ids"]

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of image-token positions, taken from the ids (never from fixed offsets)."""
        return input_ids == self.image_token_id

    # ---- geometry ---------------------------------------------------------------------------
    def geometry(self) -> dict[str, Any]:
        """The preprocessing geometry record (see :mod:`medbench.geometry`)."""
        proc = self.processor.image_processor
        return {"mode": "resize_shortest+center_crop",
                "shortest_edge": int(proc.size.get("shortest_edge", min(self.input_size))),
                "crop": list(self.input_size), "grid_size": self.grid_size}

    def roi_in_input_frame(self, roi: RoI, image_size: tuple[int, int]) -> np.ndarray:
        """The RoI as a boolean mask in the model-input frame, through this backbone's geometry."""
        from medbench.geometry import roi_in_frame

        return roi_in_frame(roi, image_size, self.geometry())

    def roi_to_grid(self, roi: RoI, image_size: tuple[int, int]) -> np.ndarray:
        """Fraction of each visual-token cell covered by the RoI (G×G, row-major like the tokens)."""
        mask = self.roi_in_input_frame(roi, image_size).astype(np.float32)
        g = self.grid_size
        h, w = mask.shape
        return mask.reshape(g, h // g, g, w // g).mean(axis=(1, 3))
