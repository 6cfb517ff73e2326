"""Task base class: where samples come from and how they are scored."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from medbench.types import Sample, Skip


class DataRootError(FileNotFoundError):
    """The dataset is missing or laid out wrongly; the message names the expected layout."""


class Task(ABC):
    """A dataset with splits, a prompt style and a metric protocol.

    Subclasses set the class attributes and implement :meth:`load`. Records a loader refuses are
    appended to ``self.skipped`` (never silently dropped) and reported in results.json.
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # "vqa" | "report"
    embedded: ClassVar[bool] = False
    #: Its column group in the paper's tables (``"SLAKE"``); ``None``: not a paper dataset — its
    #: columns come after the paper's, under its name.
    label: ClassVar[str | None] = None
    version: ClassVar[str] = "1"
    metric_protocol: ClassVar[str] = "llava_med"
    eval_split: ClassVar[str] = "test"
    train_split: ClassVar[str] = "train"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    expected_layout: ClassVar[str] = ""

    def __init__(self, data_root: str | os.PathLike | None = None):
        self.data_root = Path(data_root) if data_root is not None else self.default_data_root()
        self.skipped: list[Skip] = []

    @classmethod
    def default_data_root(cls) -> Path | None:
        base = os.environ.get("MEDBENCH_DATA")
        return Path(base) / cls.name if base else None

    @abstractmethod
    def load(self, split: str) -> list[Sample]:
        """Every valid sample of ``split`` in a stable order (sorted by id)."""

    def metric_families(self) -> dict[str, Callable[[int], Any]]:
        """Task-specific metric families scored beside the protocol's: name → factory(seed) → Metric."""
        return {}

    def skip(self, record_id: str, reason: str) -> None:
        self.skipped.append(Skip(str(record_id), reason))
