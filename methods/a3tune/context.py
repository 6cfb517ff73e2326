"""Per-forward context of A³TUNE, taken from ``input_ids`` by forward hooks on the Llava model.

:func:`compute_spans` finds, per row and under left or right padding, the image tokens, the
prompt span (after the image up to the generation boundary: the end of the template's text
after ``{question}``, e.g. " ASSISTANT:") and the alignment rows. :class:`A3Hooks` fills the
shared :class:`~medbench.methods.a3tune.moe.RoutingState` before every forward and, while
training with alignment, opens a :class:`~medbench.methods.a3tune.capture.HeadCapture` for the
rows (spec §6: r_lh without autograd, selected or calibrated heads recomputed with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medbench.attention import capture
from medbench.methods.a3tune.capture import HeadCapture
from medbench.methods.a3tune.moe import RoutingState
from medbench.types import AnswerType, Sample


@dataclass
class Spans:
    """Row-wise positions of one batch ([B, S] masks, [B] indices; -1 = none)."""

    image_mask: torch.Tensor
    prompt_mask: torch.Tensor
    last_image: torch.Tensor
    boundary: torch.Tensor
    last_valid: torch.Tensor

    def rows(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Alignment query rows ([B, Q] positions, [B, Q] validity).

        ``post_image``: every non-pad position after the image up to the last token (with right-padded
        training batches, the last supervised one); ``answer``: the rows that predict answer tokens.
        """
        has_image = self.last_image >= 0
        if kind == "answer":
            lo, hi = self.boundary - 1, self.last_valid - 1
        else:
            lo, hi = self.last_image + 1, self.last_valid
        lo = torch.where(has_image, lo, torch.zeros_like(lo))
        hi = torch.where(has_image, hi, lo - 1)
        count = (hi - lo + 1).clamp(min=0)
        width = max(1, int(count.max()))
        offsets = torch.arange(width, device=lo.device)
        valid = offsets[None, :] < count[:, None]
        positions = torch.where(valid, lo[:, None] + offsets[None, :], self.last_valid.clamp(min=0)[:, None])
        return positions, valid


def _last_true(mask: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, pos, torch.full_like(pos, -1)).max(dim=1).values


def compute_spans(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int,
                  suffix: list[int]) -> Spans:
    """Image tokens, prompt span and generation boundary of each row (ids only, no fixed offsets)."""
    n, width = input_ids.shape
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    image = (input_ids == image_token_id) & valid
    pos = torch.arange(width, device=input_ids.device)
    last_image = _last_true(image)
    last_valid = _last_true(valid)
    first_valid = torch.where(valid, pos, torch.full_like(pos, width)).min(dim=1).values
    start = torch.where(last_image >= 0, last_image + 1, first_valid)
    boundary = last_valid + 1
    if suffix and width >= len(suffix):
        pattern = torch.tensor(suffix, device=input_ids.device)
        windows = input_ids.unfold(1, len(pattern), 1)
        at = pos[: windows.shape[1]]
        hit = (windows == pattern).all(-1) & (at[None] >= start[:, None]) & (at[None] + len(pattern) - 1 <= last_valid[:, None])
        first = torch.where(hit, at, torch.full_like(at, width)).min(dim=1).values
        boundary = torch.where(first < width, first + len(pattern), boundary)
    prompt = (pos[None] >= start[:, None]) & (pos[None] < boundary[:, None]) & valid
    return Spans(image, prompt, last_image, boundary, last_valid)


def template_suffix(backbone: Any) -> list[int]:
    """Token ids of the template text after the question, as tokenized in context."""

    def ids(question: str) -> list[int]:
        sample = Sample(id="", image_path="", question=question, answer="", answer_type=AnswerType.OPEN, split="")
        return backbone.tokenize_prompt(backbone.prompt_text(sample))

    a, b = ids("x 1"), ids("y z")
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:] if n else []


@dataclass
class Captured:
    """What the last training forward captured: r_lh or fixed heads' rows, and the row layout."""

    request: HeadCapture
    row_mask: torch.Tensor
    spans: Spans
    input_ids: torch.Tensor


class A3Hooks:
    """Forward pre/post hooks that set the routing context and, when aligning, the capture.

    ``fixed`` (layer → heads) captures only calibrated heads; ``ratios_only`` keeps no
    references for a later recompute (head calibration); ``all_heads`` selects the naive capture
    (benchmark reference).
    """

    def __init__(self, image_token_id: int, suffix: list[int], state: RoutingState, *,
                 align_rows: str | None = None, fixed: dict[int, list[int]] | None = None):
        self.image_token_id, self.suffix, self.state = image_token_id, suffix, state
        self.align_rows, self.fixed = align_rows, fixed
        self.ratios_only = self.all_heads = False
        self.last: Captured | None = None
        self._capture: Any = None
        self._handles: list[Any] = []

    def attach(self, model: torch.nn.Module) -> A3Hooks:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._handles = [inner.register_forward_pre_hook(self.pre, with_kwargs=True),
                         inner.register_forward_hook(self.post, with_kwargs=True, always_call=True)]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.state.cache_key = id(cache) if cache is not None else None
        prefill = cache is None or cache.get_seq_length() == 0
        self.state.image_mask = self.state.span_mask = None
        if not prefill:
            return
        mask = kwargs.get("attention_mask")
        if ids is None:
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None:
                self.state.span_mask = mask.bool() if mask is not None else torch.ones(embeds.shape[:2], dtype=torch.bool,
                                                                                       device=embeds.device)
            return
        spans = compute_spans(ids, mask, self.image_token_id, self.suffix)
        self.state.image_mask, self.state.span_mask = spans.image_mask, spans.prompt_mask
        if self.align_rows is not None:
            self._open_capture(spans, ids)

    def _open_capture(self, spans: Spans, ids: torch.Tensor) -> None:
        counts = spans.image_mask.sum(1)
        if int(counts.min()) == 0 or bool((counts != counts[0]).any()):
            raise ValueError("A³TUNE alignment needs the same number of image tokens in every training row")
        keys = spans.image_mask.nonzero()[:, 1].view(ids.shape[0], -1)
        positions, valid = spans.rows(self.align_rows)
        request = HeadCapture(query_positions=positions, key_positions=keys, row_mask=valid, fixed=self.fixed,
                              ratios_only=self.ratios_only, all_heads=self.all_heads)
        self._capture = capture(request)
        self._capture.__enter__()
        self.last = Captured(request, valid, spans, ids)

    def post(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
        self.state.image_mask = self.state.span_mask = None
