"""Pieces every phantom generator version shares: the question record, the rendered-image record,
the per-stream random generators and the report prompts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medbench.types import AnswerType

OPEN, CLOSED = AnswerType.OPEN, AnswerType.CLOSED
REPORT_PROMPTS = (
    "Describe the findings of this image.",
    "Write a radiology report for this image.",
    "What are the findings in this image?",
    "Describe this medical image.",
)


COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
DENSITY = {
    "ct": {"bright": ("hyperdense", "bright"), "dark": ("hypodense", "dark")},
    "mri": {"bright": ("hyperintense", "bright"), "dark": ("hypointense", "dark")},
}
NOUNS = {
    "cyst": (("cyst", "cysts"), ("cystic lesion", "cystic lesions")),
    "tumor": (("tumor", "tumors"), ("mass", "masses")),
    "nodule": (("nodule", "nodules"),),
}


def say(rng: np.random.Generator, phrases: dict[str, tuple[str, ...]], key: str, **fields: str) -> str:
    """One phrasing of ``phrases[key]`` (drawn with ``rng``), filled in and capitalised."""
    options = phrases[key]
    text = options[int(rng.integers(len(options)))].format(**fields)
    return text[0].upper() + text[1:]


def stream_rng(version: str, seed: int, split: str, index: int, stream: str) -> np.random.Generator:
    """A generator seeded from a stable hash of (version, seed, split, index, stream)."""
    key = f"phantom\x1f{version}\x1f{seed}\x1f{split}\x1f{index}\x1f{stream}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


@dataclass(frozen=True)
class QA:
    """One generated question with its answer and the name of its RoI mask."""

    question: str
    answer: str
    answer_type: AnswerType
    content_type: str
    roi: str
    organ: str | None = None



@dataclass
class RenderedImage:
    """Everything one generator produces for one image index: pixels, RoI masks by key, questions
    (type, QA), the report with its prompt and RoI key, per-image metadata and the structured truth."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    questions: list[tuple[str, QA]]
    report_prompt: str
    report: str
    report_roi: str
    meta: dict[str, Any]
    findings: dict[str, Any]
    artefacts: list[str] = field(default_factory=list)
