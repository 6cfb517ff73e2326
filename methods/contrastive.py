"""Shared pieces of the contrastive decoders (VCD, AVISC, M3ID, DAMRO, PAI) and their flags.

* APC(β), the adaptive plausibility constraint (VCD, Leng et al. 2024, Eq. 4):
  ``V_head = {y : l_y ≥ log β + max_w l_w}``, always computed from the **expert** logits.
* The contrast rule ``s = (1+α)·l − α·l'`` on ``V_head`` (VCD Eq. 3), shared by VCD, AVISC and
  DAMRO on raw logits.
* HF-order logits processors applied after combine: repetition penalty, then (sampling only)
  temperature, top-k and top-p; then greedy or seeded per-sample sampling.
* Variants: every ``Params`` has a ``variant`` whose preset fills the flags left unset
  (``None``); explicit ``--method-args`` always win, and the resolved values enter the run
  fingerprint.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch

from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Branch, StepwiseDecoding, left_pad
from medbench.method import MIN_TEMPERATURE, MethodArgsError, Range
from medbench.methods.nucleus import sample_rows, top_p_filter

Selection = Literal["greedy", "sample"]


@dataclass(frozen=True)
class DecodingParams:
    """Base of the baseline decoders' parameters: variant presets plus HF-order processors."""

    BASE: ClassVar[dict[str, Any]] = {}
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Ranges of the processors and of the contrast weights α (≥ 0) and APC β shared by the subclasses.
    RANGES: ClassVar[dict[str, Range]] = {
        "temperature": Range(MIN_TEMPERATURE, 100.0),
        "top_p": Range(0.0, 1.0, lo_open=True),
        "top_k": Range(lo=0),
        "repetition_penalty": Range(0.0, 100.0, lo_open=True),
        "alpha": Range(0.0, 100.0),
        "beta": Range(0.0, 1.0),
    }

    variant: str = "default"
    selection: Selection | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        preset = {"selection": "sample", "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
                  **self.BASE, **self.PRESETS.get(self.variant, {})}
        names = {f.name for f in fields(self)}
        for key, value in preset.items():
            if key in names and getattr(self, key) is None:
                object.__setattr__(self, key, value)

    def validate(self) -> None:
        if self.variant not in ("default", *self.PRESETS):
            raise MethodArgsError(f"variant={self.variant!r}: expected one of default, {', '.join(self.PRESETS)}")


def plausible(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """APC mask ``l_y ≥ log β + max l`` (VCD Eq. 4); β=0 keeps every token, β=1 only the max."""
    if beta <= 0:
        return torch.ones_like(logits, dtype=torch.bool)
    top = logits.max(dim=-1, keepdim=True).values
    return logits >= top + math.log(beta)


def contrast(expert: torch.Tensor, negative: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``(1+α)·l − α·l'`` on ``V_head(β)``, −inf elsewhere (VCD Eq. 3–4; AVISC, DAMRO)."""
    scores = (1 + alpha) * expert - alpha * negative if alpha != 0 else expert.clone()
    return scores.masked_fill(~plausible(expert, beta), float("-inf"))


def repetition_penalty(scores: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's repetition penalty: seen tokens' scores divided (>0) or multiplied (<0) by ``penalty``."""
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, history)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, history, seen)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` best tokens per row (0 disables)."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[:, -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def apply_processors(scores: torch.Tensor, history: torch.Tensor, params: DecodingParams) -> torch.Tensor:
    """Repetition penalty, then for sampling temperature → top-k → top-p (HF's order)."""
    scores = repetition_penalty(scores, history, params.repetition_penalty)
    if params.selection != "sample":
        return scores
    if params.temperature != 1.0:
        scores = scores / params.temperature
    scores = top_k_filter(scores, params.top_k or 0)
    if params.top_p < 1.0:
        scores = top_p_filter(scores, params.top_p)
    return scores


def choose(scores: torch.Tensor, generators: list[torch.Generator], selection: str | None) -> torch.Tensor:
    """Arg-max (lowest id on ties) or one seeded categorical draw per row."""
    if selection == "sample":
        return sample_rows(scores, generators)
    return scores.argmax(dim=-1)


class BaselineDecoding(StepwiseDecoding):
    """A step-wise decoder whose processors and selection come from :class:`DecodingParams`."""

    Params: ClassVar[type] = DecodingParams
    #: The parameter holding the method's plausibility cutoff (APC β, DoLa's relative top), if any.
    cutoff: ClassVar[str | None] = None

    def fallback(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        """A guarded row's scores: the main logits under the method's cutoff, as AvisC substitutes
        the main logits for NaN contrast logits and then applies APC."""
        main = logits[0]
        if self.cutoff is None:
            return main
        return main.masked_fill(~plausible(main, getattr(self.params, self.cutoff)), float("-inf"))

    @property
    def samples(self) -> bool:  # type: ignore[override]
        return self.params.selection == "sample"

    def process(self, scores: torch.Tensor, history: torch.Tensor, step: int) -> torch.Tensor:
        return apply_processors(scores, history, self.params)

    def select(self, scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        return choose(scores, generators, self.params.selection)


def text_only_branch(backbone: Backbone, batch: EncodedBatch, name: str = "text") -> Branch:
    """The prompt with its image-token ids deleted, re-left-padded (M3ID, PAI's CFG row)."""
    keep = batch.attention_mask.bool() & ~backbone.image_token_mask(batch.input_ids)
    ids, mask = left_pad([row[k] for row, k in zip(batch.input_ids, keep)], backbone.pad_token_id)
    return Branch(name, ids, mask)


def image_positions(backbone: Backbone, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, N] image-token positions per row, from the ids; one contiguous image per row."""
    mask = backbone.image_token_mask(input_ids)
    counts = mask.sum(-1)
    if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise ValueError(f"every prompt needs one image span of equal length, got counts {counts.tolist()}")
    pos = mask.nonzero()[:, 1].view(input_ids.shape[0], -1)
    if not bool((pos[:, -1] - pos[:, 0] + 1 == counts).all()):
        raise ValueError("image tokens must be contiguous")
    return pos


def derived_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from (sample seed, purpose), independent of the token generator."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{purpose}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def base_model(model: Any) -> Any:
    """The ``LlavaForConditionalGeneration`` under an optional peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
