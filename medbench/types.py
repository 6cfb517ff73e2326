"""Typed records shared by tasks, backbones, methods and the evaluator."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class AnswerType(str, enum.Enum):
    """How a sample's answer is scored."""

    OPEN = "open"
    CLOSED = "closed"
    MC = "mc"  # multiple choice: ``meta["options"]`` (a list) and ``meta["gold"]`` (the letter)
    REPORT = "report"


@dataclass(frozen=True)
class RoI:
    """Ground-truth region of interest of one question, in image pixel coordinates.

    Either a pixel mask stored as a PNG (``mask_path``, non-zero = inside) or a set of boxes
    ``(x0, y0, x1, y1)`` (exclusive upper bounds) or both; when both exist the mask wins.
    """

    boxes: tuple[tuple[float, float, float, float], ...] = ()
    mask_path: str | None = None
    label: str = ""

    def to_mask(self, width: int, height: int):
        """Boolean numpy mask of shape (height, width)."""
        import numpy as np

        if self.mask_path is not None:
            from PIL import Image

            with Image.open(self.mask_path) as im:
                mask = np.asarray(im.convert("L")) > 0
            if mask.shape != (height, width):
                raise ValueError(
                    f"RoI mask {self.mask_path} has shape {mask.shape}, image is {(height, width)}"
                )
            return mask
        mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in self.boxes:
            xa, ya = max(0, int(round(x0))), max(0, int(round(y0)))
            xb, yb = min(width, int(round(x1))), min(height, int(round(y1)))
            if xb > xa and yb > ya:
                mask[ya:yb, xa:xb] = True
        return mask

    def to_json(self) -> dict[str, Any]:
        return {"boxes": [list(b) for b in self.boxes], "mask_path": self.mask_path, "label": self.label}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RoI | None:
        if not data:
            return None
        return cls(
            boxes=tuple(tuple(float(v) for v in b) for b in data.get("boxes", [])),
            mask_path=data.get("mask_path"),
            label=data.get("label", ""),
        )


@dataclass(frozen=True)
class Sample:
    """One evaluation or training item.

    ``question`` is the bare question or instruction; backbones wrap it in their own template.
    ``meta`` carries breakdown fields such as modality and content type.
    """

    id: str
    image_path: str
    question: str
    answer: str
    answer_type: AnswerType
    split: str
    roi: RoI | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> Path:
        return Path(self.image_path)


@dataclass(frozen=True)
class Skip:
    """A record a loader refused, with the reason; counted and reported in results."""

    id: str
    reason: str


@dataclass
class Prediction:
    """One decoded answer, as written to ``predictions.jsonl``."""

    id: str
    prompt_hash: str
    prediction: str
    answer: str
    answer_type: str
    seed: int
    num_tokens: int = 0
    error: str | None = None
    attention: dict[str, Any] | None = None
    guards: int = 0
