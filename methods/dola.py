"""DoLa — Decoding by Contrasting Layers (Chuang et al., ICLR 2024), implemented in medbench.

transformers 5 moved DoLa to a Hub repository (fails offline), so the rule lives here:

* early exits ``q_j = softmax(lm_head(h_j))`` at the last position, **without** the final norm
  for j < N (as the reference and HF's port do; ``premature_norm=true`` applies it);
  ``hidden_states[N]`` already carries the norm; layer 0 is the embeddings;
* dynamic premature layer (Eq. 2): ``M = ½(q_N+q_j)``,
  ``d_j = ½[KL(M‖q_N) + KL(M‖q_j)]`` (each KL averaged over the vocabulary), ``j* = argmax d_j``;
* contrast (Eq. 3–4): ``F = log q_N − log q_{j*}`` on ``{log q_N ≥ log(relative_top) + max log q_N}``
  (≥ 1 token), −inf elsewhere; then processors, then arg-max. Static DoLa fixes ``j*`` with
  ``premature_layer``.

Defaults (paper App. B): mature layer N (final), candidates ``low`` = HF's rule (``[0,2,…,14]`` on
32 untied layers; ``[0]`` on the 4-layer tiny model), ``relative_top=0.1``, greedy without a
repetition penalty (A3Tune's effective setting). ``relative_top=1`` reduces to greedy; static
premature = mature gives ``F≡0`` on ``V_head``, i.e. the lowest id in ``V_head`` (not greedy).
Variants: ``reference`` averages the divergence over the **batch** (one layer per batch, as the
reference code; equal to the default at batch 1); ``sample`` uses A3Tune's arguments
(sampling, T=0.9, top-p 0.95, top-k 0). The reference's open-ended setting adds
``repetition_penalty=1.2``. Layers outside the model (candidates ≥ the mature layer, a premature or
mature layer above the depth) are refused before decoding (HF silently drops such candidates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Prefill
from medbench.method import MethodArgsError, Range
from medbench.methods.contrastive import BaselineDecoding, DecodingParams, base_model


@dataclass(frozen=True)
class DoLaParams(DecodingParams):
    BASE: ClassVar[dict] = {"selection": "greedy"}
    PRESETS: ClassVar[dict] = {
        "reference": {},
        "sample": {"selection": "sample", "temperature": 0.9, "top_p": 0.95, "top_k": 0},
    }

    RANGES: ClassVar[dict[str, Range]] = {"premature_layer": Range(lo=0, depth_hi=0),
                                          "mature_layer": Range(lo=1, depth_hi=0),
                                          "relative_top": Range(0.0, 1.0, lo_open=True)}

    variant: Literal["default", "reference", "sample"] = "default"
    candidate_layers: str = "low"
    premature_layer: int | None = None
    mature_layer: int | None = None
    relative_top: float = 0.1
    premature_norm: bool = False

    def validate(self) -> None:
        super().validate()
        if self.candidate_layers not in ("low", "high"):
            try:
                layers = parse_layers(self.candidate_layers)
            except ValueError:
                layers = None
            if layers is None or min(layers) < 0:
                raise MethodArgsError(
                    f"candidate_layers={self.candidate_layers!r}: expected low, high or a list like 0,2,4"
                )
        if None not in (self.premature_layer, self.mature_layer) and self.premature_layer > self.mature_layer:
            raise MethodArgsError(f"premature_layer={self.premature_layer} is above mature_layer={self.mature_layer}")

    def validate_depth(self, n_layers: int) -> None:
        """Premature and candidate layers below the mature layer of an ``n_layers``-layer model."""
        mature = n_layers if self.mature_layer is None else self.mature_layer
        if self.premature_layer is not None and self.premature_layer > mature:
            raise MethodArgsError(f"premature_layer must be in [0, {mature}] (the mature layer), "
                                  f"got {self.premature_layer}")
        if self.candidate_layers not in ("low", "high"):
            candidate_layers(self.candidate_layers, mature, tied=False)


def parse_layers(text: str) -> list[int]:
    layers = [int(p) for p in text.replace(";", ",").split(",") if p.strip()]
    if not layers:
        raise ValueError("empty layer list")
    return layers


def candidate_layers(spec: str, n_layers: int, tied: bool) -> list[int]:
    """HF's ``dola_layers`` rule for ``low``/``high``, or an explicit list (each < N)."""
    if spec in ("low", "high"):
        start = 0 if not tied else (2 if n_layers > 2 else (1 if n_layers == 2 else 0))
        if spec == "low":
            if start == n_layers // 2:
                return [start]
            return list(range(start, n_layers // 2, 2)) if n_layers <= 40 else list(range(start, 20, 2))
        return list(range(n_layers // 2, n_layers, 2)) if n_layers <= 40 else list(range(n_layers - 20, n_layers, 2))
    layers = parse_layers(spec)
    bad = [j for j in layers if not 0 <= j < n_layers]
    if bad:
        raise MethodArgsError(f"candidate layers {bad} out of range [0, {n_layers - 1}] (the final layer is the mature one)")
    return layers


def layer_divergence(mature: torch.Tensor, premature: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence [..., J] with KLs averaged over the vocabulary (DoLa Eq. 2)."""
    log_n, log_j = F.log_softmax(mature, -1), F.log_softmax(premature, -1)
    m = 0.5 * (log_n.exp() + log_j.exp())
    log_m = m.clamp_min(torch.finfo(m.dtype).tiny).log()
    kl_n = (m * (log_m - log_n)).mean(-1)
    kl_j = (m * (log_m - log_j)).mean(-1)
    return 0.5 * (kl_n + kl_j)


def dola_scores(mature: torch.Tensor, premature: torch.Tensor, relative_top: float) -> torch.Tensor:
    """``log q_N − log q_j`` on the relative-top head of ``q_N`` (DoLa Eq. 3–4)."""
    log_n, log_j = F.log_softmax(mature, -1), F.log_softmax(premature, -1)
    keep = log_n >= log_n.max(-1, keepdim=True).values + math.log(relative_top)
    return (log_n - log_j).masked_fill(~keep, float("-inf"))


class DoLa(BaselineDecoding):
    name = "dola"
    label = "DoLa"
    Params = DoLaParams
    cutoff = "relative_top"

    def prefill(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> Prefill:
        model = base_model(backbone.model)
        text = backbone.text_config
        n_layers = int(text.num_hidden_layers)
        p = self.params
        self._head = model.get_output_embeddings()
        self._norm = model.model.language_model.norm
        self.check_backbone(backbone)
        self._mature = n_layers if p.mature_layer is None else p.mature_layer
        if p.premature_layer is not None:
            self._layers = [p.premature_layer]
        else:
            tied = bool(getattr(text, "tie_word_embeddings", False) or getattr(backbone.model.config,
                                                                              "tie_word_embeddings", False))
            self._layers = candidate_layers(p.candidate_layers, self._mature, tied)
        return super().prefill(backbone, batch, seeds)

    def forward_kwargs(self) -> dict[str, Any]:
        return {"output_hidden_states": True}

    def exit_logits(self, hidden: torch.Tensor, layer: int, n_layers: int) -> torch.Tensor:
        """``lm_head`` on one layer's last-position state (final norm only where it belongs)."""
        if layer < n_layers and self.params.premature_norm:
            hidden = self._norm(hidden)
        return self._head(hidden).float()

    def branch_logits(self, out: Any, n_branch: int) -> list[torch.Tensor]:
        states = out.hidden_states
        n_layers = len(states) - 1
        layers = [self._mature, *self._layers]
        return [self.exit_logits(states[j][:, -1], j, n_layers) for j in layers]

    def combine(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        mature, candidates = logits[0], torch.stack(logits[1:], dim=1)  # [B, V], [B, J, V]
        if candidates.shape[1] == 1:
            chosen = candidates[:, 0]
        else:
            div = layer_divergence(mature[:, None], candidates)  # [B, J]
            if self.params.variant == "reference":
                pick = div.mean(0).argmax().expand(div.shape[0])
            else:
                pick = div.argmax(-1)
            chosen = candidates[torch.arange(candidates.shape[0]), pick]
        return dola_scores(mature, chosen, self.params.relative_top)
