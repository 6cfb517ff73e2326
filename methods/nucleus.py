"""Nucleus (top-p) sampling (Holtzman et al., 2020), top-p 0.9 at temperature 1.

Each sample draws from its own generator seeded from (seed, task, sample id), so a sample's
output does not depend on the batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medbench.engine import StepwiseDecoding
from medbench.method import MIN_TEMPERATURE, Range


@dataclass(frozen=True)
class NucleusParams:
    RANGES: ClassVar[dict[str, Range]] = {"top_p": Range(0.0, 1.0, lo_open=True),
                                          "temperature": Range(MIN_TEMPERATURE, 100.0)}

    top_p: float = 0.9
    temperature: float = 1.0


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (≥ 1 token)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_scores.softmax(-1) >= top_p
    drop_sorted[..., 0] = False  # the best token stays even where top_p rounds to 0 in the scores' dtype
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def sample_rows(scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One categorical draw per row, each from that row's own generator."""
    probs = scores.float().softmax(-1).cpu()
    picks = [torch.multinomial(probs[i], 1, generator=generators[i]) for i in range(probs.shape[0])]
    return torch.cat(picks).to(scores.device)


class Nucleus(StepwiseDecoding):
    name = "nucleus"
    label = "Nucleus"
    Params = NucleusParams
    samples = True

    def select(self, scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        scores = top_p_filter(scores / self.params.temperature, self.params.top_p)
        return sample_rows(scores, generators)
