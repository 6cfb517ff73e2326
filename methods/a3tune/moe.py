"""A³MoE: Q-MoE (Eq. 4–5) on ``q_proj`` and K-MoE (Eq. 6–7) on ``k_proj`` of every LM layer.

Each wrapper keeps the frozen projection and adds stacked rank-r LoRA experts
(A [O·r, d_in] Kaiming-uniform, B [d_out, O·r] zero → training starts at the base model, scale
α/r = 8/16). Per-forward context (image positions, prompt span, cache identity) is held by a
shared :class:`RoutingState` that the A³TUNE forward hooks fill from ``input_ids``.

- Q-MoE: α = softmax(MLP(mean of the q_proj input over the prompt span)) per sample, fp32;
  ΔW_q = Σ_o α_o B_o A_o on every token. α is cached at prefill per cache object and reused by
  decode steps (beams share it; two-branch decoders keep one α per row).
- K-MoE: β^c = softmax(MLP(x_c)) per image token (fp32); ΔW_k^c = Σ_{o∈top-B} β^c_o B_o A_o
  (paper: gates summed, no renormalisation). ``gate=renorm`` renormalises the top-B gates;
  ``impl=ref`` reproduces the reference: linear router without gradient, gate 1, the
  highest-index selected expert overwrites. Text and decode tokens use the frozen W_k.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: How many cache objects keep their Q-MoE routing weights (decoders hold one or two at a time).
ALPHA_CACHE_SIZE = 16


@dataclass
class RoutingState:
    """Context of the current forward, shared by all A³MoE modules of a model."""

    image_mask: torch.Tensor | None = None
    span_mask: torch.Tensor | None = None
    cache_key: int | None = None
    collect_balance: bool = False
    balance: list[torch.Tensor] = field(default_factory=list)
    alphas: OrderedDict = field(default_factory=OrderedDict)
    last_alpha: dict[int, torch.Tensor] = field(default_factory=dict)

    def store_alpha(self, layer: int, alpha: torch.Tensor) -> None:
        self.last_alpha[layer] = alpha.detach()
        if self.cache_key is None:
            return
        self.alphas.setdefault(self.cache_key, {})[layer] = alpha.detach()
        self.alphas.move_to_end(self.cache_key)
        while len(self.alphas) > ALPHA_CACHE_SIZE:
            self.alphas.popitem(last=False)

    def cached_alpha(self, layer: int, rows: int) -> torch.Tensor:
        """α of a decode step: the prefill of this cache object, else the last prefill of equal rows."""
        found = self.alphas.get(self.cache_key, {}).get(layer) if self.cache_key is not None else None
        if found is None:
            found = self.last_alpha.get(layer)
        if found is None or found.shape[0] != rows:
            raise RuntimeError("Q-MoE has no routing weights for this decode step: run a prefill with the "
                               "prompt (input_ids with the image tokens) first")
        return found


def make_router(d_in: int, n_out: int, kind: str, hidden: int) -> nn.Module:
    """``mlp``: Linear(d, hidden) → GELU → Linear(hidden, O); ``linear``: Linear(d, O)."""
    if kind == "linear":
        return nn.Linear(d_in, n_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


class _ExpertLinear(nn.Module):
    """Frozen ``base`` plus O stacked LoRA experts and a router (all fp32 trainable)."""

    def __init__(self, base: nn.Linear, layer_idx: int, state: RoutingState, n_experts: int, r: int,
                 alpha: float, router: str, router_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.layer_idx = layer_idx
        self.state = state
        self.n_experts, self.r = n_experts, r
        self.scaling = alpha / r
        device = base.weight.device
        self.experts_A = nn.Parameter(torch.empty(n_experts * r, base.in_features, device=device))
        self.experts_B = nn.Parameter(torch.zeros(base.out_features, n_experts * r, device=device))
        nn.init.kaiming_uniform_(self.experts_A, a=math.sqrt(5))
        self.router = make_router(base.in_features, n_experts, router, router_hidden).to(device)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def mixture(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Σ_o gate_o · B_o A_o drop(x) · scale; ``gates`` broadcast to [..., O].

        The experts' input dropout (reference: p=0.05 in each ``LoRALayer``) draws one mask shared
        by the stacked experts, where the reference draws one per expert module.
        """
        h = F.linear(self.dropout(x.to(self.experts_A.dtype)), self.experts_A)
        h = h.view(*h.shape[:-1], self.n_experts, self.r) * gates.to(h.dtype)[..., None]
        return F.linear(h.flatten(-2), self.experts_B) * self.scaling


class QMoELinear(_ExpertLinear):
    """Prompt-level soft mixture of LoRA experts on ``q_proj`` (Eq. 4–5)."""

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """α [B, O] from the masked mean of ``x`` over the prompt span (Eq. 4), or the cached α."""
        span = self.state.span_mask
        if span is None or span.shape != x.shape[:2]:
            return self.state.cached_alpha(self.layer_idx, x.shape[0])
        weights = span.to(torch.float32)[..., None]
        pooled = (x.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        alpha = torch.softmax(self.router(pooled.to(self._router_dtype())).float(), dim=-1)
        self.state.store_alpha(self.layer_idx, alpha)
        return alpha

    def _router_dtype(self) -> torch.dtype:
        return next(self.router.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        alpha = self.route(x)
        return out + self.mixture(x, alpha[:, None, :]).to(out.dtype)


class KMoELinear(_ExpertLinear):
    """Visual-token-level top-B sparse mixture of LoRA experts on ``k_proj`` (Eq. 6–7)."""

    def __init__(self, *args: Any, top_b: int, gate: str = "sum", impl: str = "paper",
                 balance: str = "default", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.top_b, self.gate, self.impl, self.balance_kind = top_b, gate, impl, balance

    def gates(self, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gates [T, O], router probabilities β [T, O], top-B indicator 1_o [T, O])."""
        if self.impl == "ref":
            with torch.no_grad():
                probs = torch.softmax(self.router(xi.float()).float(), dim=-1)
        else:
            probs = torch.softmax(self.router(xi.float()).float(), dim=-1)
        top = probs.topk(self.top_b, dim=-1).indices
        chosen = torch.zeros_like(probs).scatter(-1, top, 1.0)
        if self.impl == "ref":
            return F.one_hot(top.max(-1).values, self.n_experts).to(probs.dtype), probs, chosen
        if self.gate == "renorm" and self.top_b == 1:
            return chosen, probs, chosen
        gates = probs * chosen
        if self.gate == "renorm":
            gates = gates / gates.sum(-1, keepdim=True)
        return gates, probs, chosen

    def balance_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """O·Σ_e f_e·P̄_e (f_e: detached share of top-B picks); ``ref``: Σ_e P̄_e·mean(1_e)."""
        if self.balance_kind == "ref":
            return (probs.mean(0) * chosen.detach().mean(0)).sum()
        share = chosen.detach().sum(0) / chosen.detach().sum().clamp(min=1.0)
        return self.n_experts * (share * probs.mean(0)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        mask = self.state.image_mask
        if mask is None or mask.shape != x.shape[:2] or not bool(mask.any()):
            return out
        xi = x[mask]
        gates, probs, chosen = self.gates(xi)
        if self.state.collect_balance:
            self.state.balance.append(self.balance_loss(probs, chosen))
        delta = self.mixture(xi, gates).to(out.dtype)
        full = torch.zeros_like(out).masked_scatter(mask[..., None].expand_as(out), delta)
        return out + full


@dataclass(frozen=True)
class MoESpec:
    """Which projections get experts, and how."""

    qmoe: bool
    kmoe: bool
    q_experts: int
    k_experts: int
    top_b: int
    r: int = 16
    alpha: float = 8.0
    q_router: str = "mlp"
    router_hidden: int = 64
    k_gate: str = "sum"
    k_impl: str = "paper"
    balance: str = "default"
    dropout: float = 0.0


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The language model's self-attention modules in layer order (never the vision tower's)."""
    found = [(name, m) for name, m in model.named_modules()
             if "language_model" in name and hasattr(m, "q_proj") and hasattr(m, "k_proj") and hasattr(m, "layer_idx")]
    if not found:
        raise ValueError("no language-model attention modules with q_proj/k_proj found")
    return [m for _, m in sorted(found, key=lambda t: t[1].layer_idx)]


def install_a3moe(model: nn.Module, spec: MoESpec, state: RoutingState) -> list[_ExpertLinear]:
    """Wrap q_proj (Q-MoE) and/or k_proj (K-MoE) of every LM layer; returns the new modules."""
    created: list[_ExpertLinear] = []
    k_router = "linear" if spec.k_impl == "ref" else "mlp"
    for attn in attention_modules(model):
        if spec.qmoe:
            attn.q_proj = QMoELinear(attn.q_proj, attn.layer_idx, state, spec.q_experts, spec.r, spec.alpha,
                                     spec.q_router, spec.router_hidden, spec.dropout)
            created.append(attn.q_proj)
        if spec.kmoe:
            attn.k_proj = KMoELinear(attn.k_proj, attn.layer_idx, state, spec.k_experts, spec.r, spec.alpha,
                                     k_router, spec.router_hidden, spec.dropout, top_b=spec.top_b, gate=spec.k_gate,
                                     impl=spec.k_impl, balance=spec.balance)
            created.append(attn.k_proj)
    return created


def remove_a3moe(model: nn.Module) -> None:
    """Put the frozen projections back."""
    for attn in attention_modules(model):
        for name in ("q_proj", "k_proj"):
            module = getattr(attn, name)
            if isinstance(module, _ExpertLinear):
                setattr(attn, name, module.base)


def moe_modules(model: nn.Module) -> dict[str, _ExpertLinear]:
    """``layers.<i>.<q_proj|k_proj>`` → A³MoE module."""
    out = {}
    for attn in attention_modules(model):
        for name in ("q_proj", "k_proj"):
            module = getattr(attn, name)
            if isinstance(module, _ExpertLinear):
                out[f"layers.{attn.layer_idx}.{name}"] = module
    return out


def a3moe_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Experts and routers only (the frozen base weights are not part of the adapter)."""
    state = {}
    for prefix, module in moe_modules(model).items():
        for name, tensor in module.state_dict().items():
            if not name.startswith("base."):
                state[f"{prefix}.{name}"] = tensor.detach().cpu().contiguous()
    return state


def load_a3moe_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict load: every expert/router tensor must be present with its shape, and nothing else."""
    own = a3moe_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"A³MoE checkpoint does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for prefix, module in moe_modules(model).items():
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        for name, tensor in sub.items():
            target = module.get_parameter(name)
            if target.shape != tensor.shape:
                raise ValueError(f"A³MoE tensor {prefix}.{name}: shape {tuple(tensor.shape)} ≠ {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(tensor.to(target.dtype))
