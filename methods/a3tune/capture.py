"""Efficient attention capture for the alignment loss (spec §6): SDPA stays the main path.

Inside the registered ``medbench`` attention function, :class:`HeadCapture` records per layer

* **phase A** (``head_selection=per_step``): r_lh (Eq. 8) of every head for every sample,
  computed under ``torch.no_grad()`` from the alignment rows' softmax, plus *references* to the
  layer's ``query``/``key`` and mask (tensors SDPA's backward keeps anyway), or
* **fixed heads** (``head_selection=calibrate``): the calibrated heads' image-key rows, with
  autograd, right away.

After the forward, :meth:`HeadCapture.recompute` takes each sample's top-R heads (global over
L·H) and recomputes only those heads' rows × all keys with autograd, keeping the image columns.
Retained for backward: R·|I|·S fp32 values per sample instead of L·H·|I|·S.

``all_heads=True`` keeps the naive path (every head's rows with autograd, then a gather), the
reference that ``medbench bench train`` measures beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from medbench.attention import CaptureRequest, image_attention_rows, mask_rows, query_rows, row_probs


@dataclass
class LayerRefs:
    """What phase B needs of one layer: its query/key (autograd-tracked), rows, mask and scale."""

    query: torch.Tensor
    key: torch.Tensor
    rows: torch.Tensor
    mask: torch.Tensor | None
    scale: float
    groups: int


def head_rows(refs: LayerRefs, batch_idx: torch.Tensor, head_idx: torch.Tensor,
              key_positions: torch.Tensor) -> torch.Tensor:
    """Probabilities [M, Q, N] on the image keys of heads ``head_idx`` of samples ``batch_idx`` (Eq. 8 rows)."""
    rows = refs.rows[batch_idx]
    q = refs.query[batch_idx[:, None], head_idx[:, None], rows]
    k = refs.key[batch_idx, torch.div(head_idx, refs.groups, rounding_mode="floor")]
    mask = None if refs.mask is None else refs.mask[batch_idx, 0]
    probs = row_probs(q, k, refs.scale, mask)
    cols = key_positions[batch_idx][:, None, :].expand(-1, rows.shape[1], -1)
    return torch.gather(probs, 2, cols)


def image_share(refs: LayerRefs, key_positions: torch.Tensor) -> torch.Tensor:
    """Σ_{c∈V} P_lh[i, c] per head and row [B, H, Q] (Eq. 8's numerator; each row sums to 1).

    One exp pass of the max-shifted scores, image columns summed over all columns, with query
    heads grouped onto their key/value head (no GQA repeat) and the mask broadcast over heads.
    """
    query, key = refs.query, refs.key
    b, h, _, d = query.shape
    q_len, n_keys, kv = refs.rows.shape[1], key.shape[2], key.shape[1]
    q = torch.gather(query, 2, refs.rows[:, None, :, None].expand(b, h, q_len, d))
    scores = torch.matmul(q.float().reshape(b, kv, refs.groups * q_len, d), key.float().transpose(-1, -2))
    scores = scores.view(b, h, q_len, n_keys) * refs.scale
    if refs.mask is not None:
        scores = scores + refs.mask
    weights = scores.sub_(scores.amax(-1, keepdim=True)).exp_()  # scores is this function's own tensor
    image = torch.gather(weights, 3, key_positions[:, None, None, :].expand(b, h, q_len, key_positions.shape[1]))
    return image.sum(-1) / weights.sum(-1)


@dataclass
class HeadCapture:
    """Capture request of A³TUNE training (duck-typed for :func:`medbench.attention.capture`).

    ``query_positions`` [B, Q] alignment rows with ``row_mask`` [B, Q]; ``key_positions`` [B, N]
    image tokens; ``fixed`` maps layer → calibrated heads (None: per-step selection);
    ``ratios_only`` skips keeping references (calibration under ``no_grad``); ``n_heads`` is
    read from the query at the first recorded layer.
    """

    query_positions: torch.Tensor
    key_positions: torch.Tensor
    row_mask: torch.Tensor
    fixed: dict[int, list[int]] | None = None
    ratios_only: bool = False
    all_heads: bool = False
    n_heads: int = 0
    ratios: dict[int, torch.Tensor] = field(default_factory=dict)
    refs: dict[int, LayerRefs] = field(default_factory=dict)
    fixed_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    all_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    _masks: list = field(default_factory=list)

    def wants(self, layer_idx: int) -> bool:
        return self.fixed is None or layer_idx in self.fixed

    @property
    def layers(self) -> list[int]:
        """Recorded layers in order (the layer axis of :meth:`ratio_matrix` and head indices)."""
        return sorted(self.fixed_rows if self.fixed is not None else self.ratios)

    def record(self, module, query, key, attention_mask, scaling) -> None:
        layer = module.layer_idx
        if self.all_heads:
            self._record_all(module, query, key, attention_mask, scaling)
            return
        rows = query_rows(query, key.shape[2], self.query_positions)
        refs = LayerRefs(query, key, rows, self._mask_rows(attention_mask, rows, key.shape[2]),
                         scaling if scaling is not None else query.shape[-1] ** -0.5,
                         getattr(module, "num_key_value_groups", 1))
        b, self.n_heads = query.shape[0], query.shape[1]
        if self.fixed is not None:
            heads = torch.tensor(self.fixed[layer], device=query.device)
            batch_idx = torch.arange(b, device=query.device).repeat_interleave(len(heads))
            image = head_rows(refs, batch_idx, heads.repeat(b), self.key_positions)
            self.fixed_rows[layer] = image.view(b, len(heads), *image.shape[1:])
            return
        with torch.no_grad():
            share = image_share(refs, self.key_positions)
            w = self.row_mask.to(share.dtype)[:, None, :]
            self.ratios[layer] = (share * w).sum(-1) / w.sum(-1).clamp(min=1.0)
        if not self.ratios_only:
            self.refs[layer] = refs

    def _record_all(self, module, query, key, attention_mask, scaling) -> None:
        """Naive path: every head's rows with autograd, r_lh from them."""
        request = CaptureRequest(query_positions=self.query_positions, key_positions=self.key_positions,
                                 per_head=True)
        image = image_attention_rows(module, query, key, attention_mask, scaling, request)
        self.n_heads = query.shape[1]
        if self.fixed is not None:
            image = image[:, self.fixed[module.layer_idx]]
            self.fixed_rows[module.layer_idx] = image
            return
        self.all_rows[module.layer_idx] = image
        with torch.no_grad():
            w = self.row_mask.to(image.dtype)[:, None, :]
            self.ratios[module.layer_idx] = (image.sum(-1) * w).sum(-1) / w.sum(-1).clamp(min=1.0)

    def _mask_rows(self, attention_mask, rows, n_keys):
        """The rows' mask, shared by the layers that receive the same mask tensor."""
        for src, n, out in self._masks:
            if src is attention_mask and n == n_keys:
                return out
        out = mask_rows(attention_mask, rows, n_keys)
        self._masks.append((attention_mask, n_keys, out))
        return out

    def ratio_matrix(self) -> torch.Tensor:
        """r_lh (Eq. 8) [B, L·H], head index = layer position·H + h."""
        return torch.cat([self.ratios[layer] for layer in self.layers], dim=1)

    def recompute(self, heads: torch.Tensor) -> torch.Tensor:
        """Rows [B, R, Q, N] of the selected heads (indices into :meth:`ratio_matrix`), with autograd."""
        b, r = heads.shape
        layers = self.layers
        if self.all_heads:
            stacked = torch.cat([self.all_rows[layer] for layer in layers], dim=1)
            return torch.gather(stacked, 1, heads[:, :, None, None].expand(b, r, *stacked.shape[2:]))
        parts, order = [], []
        for pos, layer in enumerate(layers):
            hit = (heads // self.n_heads) == pos
            if not bool(hit.any()):
                continue
            batch_idx, slot = hit.nonzero(as_tuple=True)
            parts.append(head_rows(self.refs[layer], batch_idx, heads[batch_idx, slot] % self.n_heads,
                                   self.key_positions))
            order.append(batch_idx * r + slot)
        flat = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return flat.view(b, r, *flat.shape[1:])

    def selected_rows(self) -> torch.Tensor:
        """Rows [B, R, Q, N] of the calibrated heads, in (layer, head) order."""
        return torch.cat([self.fixed_rows[layer] for layer in self.layers], dim=1)


def heads_by_layer(heads: list[int], n_heads: int) -> dict[int, list[int]]:
    """Global head indices l·H + h → {layer: sorted heads} (the calibrated set of ``heads.json``)."""
    out: dict[int, list[int]] = {}
    for head in sorted(heads):
        out.setdefault(head // n_heads, []).append(head % n_heads)
    return out
