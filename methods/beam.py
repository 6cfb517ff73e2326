"""Beam search with 5 beams through transformers' own ``generate`` (deterministic)."""

from __future__ import annotations

from dataclasses import dataclass

from medbench.engine import Generation, hf_generate
from medbench.method import DecodingMethod, MethodArgsError


@dataclass(frozen=True)
class BeamParams:
    num_beams: int = 5
    length_penalty: float = 1.0

    def validate(self) -> None:
        if self.num_beams < 1:
            raise MethodArgsError(f"num_beams must be ≥ 1, got {self.num_beams}")


class Beam(DecodingMethod):
    name = "beam"
    Params = BeamParams

    def generate(self, backbone, batch, seeds, max_new_tokens) -> Generation:
        return hf_generate(
            backbone, batch, max_new_tokens, num_beams=self.params.num_beams, do_sample=False,
            length_penalty=self.params.length_penalty, early_stopping=False,
        )
