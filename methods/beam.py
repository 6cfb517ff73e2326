"""Beam search with 5 beams through transformers' own ``generate`` (deterministic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medbench.engine import Generation, hf_generate
from medbench.method import DecodingMethod, Range


@dataclass(frozen=True)
class BeamParams:
    RANGES: ClassVar[dict[str, Range]] = {"num_beams": Range(1, 64), "length_penalty": Range(-10.0, 10.0)}

    num_beams: int = 5
    length_penalty: float = 1.0


class Beam(DecodingMethod):
    name = "beam"
    label = "Beam"
    Params = BeamParams

    def generate(self, backbone, batch, seeds, max_new_tokens) -> Generation:
        return hf_generate(
            backbone, batch, max_new_tokens, num_beams=self.params.num_beams, do_sample=False,
            length_penalty=self.params.length_penalty, early_stopping=False,
        )
