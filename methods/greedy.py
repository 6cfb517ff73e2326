"""Greedy decoding: the arg-max token at every step (the paper's default decoding)."""

from __future__ import annotations

import torch

from medbench.engine import StepwiseDecoding


class Greedy(StepwiseDecoding):
    name = "greedy"
    label = "Greedy"

    def select(self, scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        return scores.argmax(dim=-1)
