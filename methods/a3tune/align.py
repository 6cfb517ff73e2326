"""Visually-critical heads (Eq. 8–9) and the attention alignment loss (Eq. 10).

Shapes: ``probs`` [B, L·H, Q, N] — per head, per query row, the softmax probability (over all
visible keys) on each of the N image keys; ``row_mask`` [B, Q] marks real rows; ``segments``
[B, K, N] bool grid masks with ``seg_mask`` [B, K] marking real segments.
"""

from __future__ import annotations

import torch


def stack_heads(captured: dict[int, torch.Tensor], layers: list[int]) -> torch.Tensor:
    """[B, L·H, Q, N] from per-layer captures [B, H, Q, N], head index = position·H + h."""
    return torch.cat([captured[layer] for layer in layers], dim=1)


def _row_mean(values: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the query axis (dim 2 of [B, X, Q, ...]) of the real rows."""
    w = row_mask.to(values.dtype)
    w = w.view(w.shape[0], 1, w.shape[1], *([1] * (values.dim() - 3)))
    return (values * w).sum(2) / w.sum(2).clamp(min=1.0)


def visual_ratio(probs: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """r_lh (Eq. 8) per sample [B, L·H]: the mean over rows of the image share of each row.

    Each row is a softmax over all keys (image and text), so the denominator of Eq. 8 is 1.
    """
    return _row_mean(probs.sum(-1), row_mask)


def select_heads(ratio: torch.Tensor, top_r: int) -> torch.Tensor:
    """Indices [B, R] of the R heads with the highest r_lh (ties: lower head index first)."""
    order = torch.sort(ratio, dim=-1, descending=True, stable=True).indices
    return order[:, :top_r]


def refined_rows(probs: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """M̃ per row (Eq. 9): the mean over the selected heads, [B, Q, N]."""
    b, _, q, n = probs.shape
    picked = torch.gather(probs, 1, heads[:, :, None, None].expand(b, heads.shape[1], q, n))
    return picked.mean(1)


def alignment_loss(rows: torch.Tensor, row_mask: torch.Tensor, segments: torch.Tensor, seg_mask: torch.Tensor, *,
                   reduce: str = "mean_map", kind: str = "sq", norm: str = "sum") -> torch.Tensor:
    """Per-sample L_align [B] (Eq. 10): Σ_s (1 − Σ_{c∈s} M̃_c / Σ_c M̃_c)².

    ``reduce=mean_map`` (paper) averages the rows into one map first; ``per_row`` (Ref) applies
    the square per row and averages; ``kind=kl`` (Ref ``--use_kl``) is Σ_s mean_i KL(Q_s ‖ P_i).
    ``norm=mean`` divides by the number of segments. Samples without rows or segments give 0.
    """
    seg = segments.to(rows.dtype)
    present = seg_mask.to(rows.dtype)
    has_rows = row_mask.any(1).to(rows.dtype)
    if kind == "kl":
        p = rows / (rows.sum(-1, keepdim=True) + 1e-8)
        target = seg / (seg.sum(-1, keepdim=True) + 1e-8)
        log_p = torch.log(p.clamp_min(1e-12))
        kl = (torch.xlogy(target, target)[:, None] - target[:, None] * log_p[:, :, None]).sum(-1)
        per_seg = _row_mean(kl.transpose(1, 2)[:, :, :, None], row_mask)[..., 0]
    elif reduce == "per_row":
        frac = torch.einsum("bqn,bkn->bqk", rows, seg) / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        per_seg = _row_mean(((1 - frac) ** 2).transpose(1, 2)[:, :, :, None], row_mask)[..., 0]
    else:
        mean_map = _row_mean(rows[:, None], row_mask)[:, 0]
        frac = torch.einsum("bn,bkn->bk", mean_map, seg) / mean_map.sum(-1, keepdim=True).clamp_min(1e-12)
        per_seg = (1 - frac) ** 2
    loss = (per_seg * present).sum(-1)
    if norm == "mean":
        loss = loss / present.sum(-1).clamp(min=1.0)
    return loss * has_rows


def mean_ratio(ratios: list[torch.Tensor]) -> torch.Tensor:
    """Mean r_lh [L·H] over calibration batches of [B, L·H]."""
    stacked = torch.cat(ratios, dim=0)
    return stacked.mean(0)
