"""Attention capture through transformers' ``AttentionInterface`` (no monkeypatching).

The text model runs the registered ``medbench`` attention function. It always computes its
output with SDPA; only while a :class:`CaptureRequest` is active does it additionally recompute
softmax(QKᵀ) for the requested query rows against the image-key columns — a few rows × a few
hundred columns per layer instead of materialising every attention matrix eagerly.

``eager_mask`` is registered as the mask builder for the same name, so the function always
receives an explicit additive causal + padding mask (an unregistered mask would silently make
the model non-causal).

An optional :class:`AttentionEdit` (PAI, Liu et al., ECCV 2024, Eq. 4) amplifies the pre-softmax
scores of the last query row on image-key columns, ``ã = a + α|a|``, in chosen layers; with
``eager=True`` every row of every layer is computed with eager math (parity with
``attn_implementation="eager"``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

ATTENTION_NAME = "medbench"


@dataclass
class CaptureRequest:
    """Which attention rows to capture.

    ``query_positions``: [B, Q] absolute positions of the query rows (per batch row);
    ``key_positions``: [B, N] positions of the image tokens; ``layers``: layer indices or None
    for all. Captured probabilities are summed over the heads unless ``per_head`` is set.
    """

    query_positions: torch.Tensor
    key_positions: torch.Tensor
    layers: set[int] | None = None
    per_head: bool = False
    captured: dict[int, torch.Tensor] = field(default_factory=dict)

    def wants(self, layer_idx: int) -> bool:
        return self.layers is None or layer_idx in self.layers

    def record(self, module, query, key, attention_mask, scaling) -> None:
        """Store this layer's image-key probabilities of the requested rows (with autograd)."""
        self.captured[module.layer_idx] = image_attention_rows(module, query, key, attention_mask, scaling, self)


@dataclass
class AttentionEdit:
    """Amplify the last query row's image-key scores: ``a + α|a|`` (after the mask and clamp).

    ``key_mask``: [B, K0] bool image-key columns per batch row (columns past K0 are text);
    ``layers``: layer indices or None for all; ``eager``: compute all rows eagerly.
    """

    key_mask: torch.Tensor
    alpha: float
    layers: set[int] | None = None
    eager: bool = False

    def wants(self, layer_idx: int) -> bool:
        return self.layers is None or layer_idx in self.layers

    def columns(self, n_keys: int) -> torch.Tensor:
        """[B, n_keys] image-column mask for the current key length."""
        k0 = self.key_mask.shape[1]
        if n_keys <= k0:
            return self.key_mask[:, :n_keys]
        return torch.nn.functional.pad(self.key_mask, (0, n_keys - k0), value=False)


#: The active capture: a :class:`CaptureRequest` or any object with ``wants(layer)`` and
#: ``record(module, query, key, attention_mask, scaling)`` (e.g. A³TUNE's head capture).
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("medbench_capture", default=None)
_EDIT: contextvars.ContextVar[AttentionEdit | None] = contextvars.ContextVar("medbench_edit", default=None)


def _repeat_kv(states: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return states
    b, h, s, d = states.shape
    return states[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def medbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA output plus, when a capture is active, the requested rows of softmax(QKᵀ)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    edit = _EDIT.get()
    if edit is not None and edit.eager:
        output = eager_rows(module, query, key, value, attention_mask, scaling, edit)
    else:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        if edit is not None and edit.alpha != 0.0 and edit.wants(module.layer_idx):
            output = output.clone()
            output[:, -1:] = eager_rows(module, query[:, :, -1:], key, value,
                                        None if attention_mask is None else attention_mask[:, :, -1:],
                                        scaling, edit).to(output.dtype)
    request = _ACTIVE.get()
    if request is not None and request.wants(module.layer_idx):
        request.record(module, query, key, attention_mask, scaling)
    return output, None


def eager_rows(module, query, key, value, attention_mask, scaling, edit: AttentionEdit) -> torch.Tensor:
    """Eager attention output [B, Q, H, D] of ``query``; the last row amplified where planned."""
    groups = getattr(module, "num_key_value_groups", 1)
    k, v = _repeat_kv(key, groups), _repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, k.transpose(2, 3)) * scale
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[2]]
    if edit.wants(module.layer_idx) and edit.alpha != 0.0:
        last = scores[:, :, -1:].float()
        last = torch.maximum(last, torch.tensor(torch.finfo(scores.dtype).min, device=last.device))
        cols = edit.columns(k.shape[2]).to(last.device)[:, None, None, :]
        last = torch.where(cols, last + edit.alpha * last.abs(), last)
        scores = torch.cat([scores[:, :, :-1].float(), last], dim=2)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, v).transpose(1, 2).contiguous()


def query_rows(query: torch.Tensor, key_len: int, positions: torch.Tensor) -> torch.Tensor:
    """Row indices [B, Q] into ``query`` of the absolute ``positions`` (the query is the last rows)."""
    q_len = query.shape[2]
    return (positions - (key_len - q_len)).clamp(0, q_len - 1)


def row_probs(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """fp32 softmax over all keys of ``q`` [..., Q, D] against ``k`` [..., S, D] plus an additive ``mask``."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1)


def mask_rows(attention_mask: torch.Tensor | None, rows: torch.Tensor, n_keys: int) -> torch.Tensor | None:
    """The additive mask [B, 1, Q, S] (fp32) of the query rows ``rows`` [B, Q]."""
    if attention_mask is None:
        return None
    b, q = rows.shape
    mask = attention_mask[:, :, :, :n_keys].float()
    return torch.gather(mask.expand(b, 1, mask.shape[2], mask.shape[-1]), 2,
                        rows[:, None, :, None].expand(b, 1, q, mask.shape[-1]))


def image_attention_rows(module, query, key, attention_mask, scaling, request: CaptureRequest) -> torch.Tensor:
    """Attention probabilities [B, H or 1, Q, N] of the requested query rows on image keys."""
    groups = getattr(module, "num_key_value_groups", 1)
    rows = query_rows(query, key.shape[2], request.query_positions)
    b, h, _, d = query.shape
    q = torch.gather(query, 2, rows[:, None, :, None].expand(b, h, rows.shape[1], d))
    k = _repeat_kv(key, groups)
    probs = row_probs(q, k, scaling if scaling is not None else d**-0.5, mask_rows(attention_mask, rows, k.shape[2]))
    cols = request.key_positions[:, None, None, :].expand(b, h, rows.shape[1], request.key_positions.shape[1])
    image = torch.gather(probs, 3, cols)
    return image if request.per_head else image.sum(dim=1, keepdim=True)


def register() -> None:
    """Register the attention function and its mask builder (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, medbench_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def install(model) -> None:
    """Make the text model of ``model`` use the medbench attention function."""
    register()
    model.set_attn_implementation({"text_config": ATTENTION_NAME})


def require_installed(model) -> None:
    """Raise unless the text model runs the medbench attention function (edits would be no-ops)."""
    impl = getattr(model.config.get_text_config(), "_attn_implementation", None)
    if impl != ATTENTION_NAME:
        raise RuntimeError(f"the text model uses attention {impl!r}; call medbench.attention.install(model) first")


@contextlib.contextmanager
def edit_attention(edit: AttentionEdit | None) -> Iterator[AttentionEdit | None]:
    """Apply ``edit`` to every medbench attention call inside the block (None: no-op)."""
    token = _EDIT.set(edit)
    try:
        yield edit
    finally:
        _EDIT.reset(token)


@contextlib.contextmanager
def capture(request: CaptureRequest) -> Iterator[CaptureRequest]:
    token = _ACTIVE.set(request)
    try:
        yield request
    finally:
        _ACTIVE.reset(token)
