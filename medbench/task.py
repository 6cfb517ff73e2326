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


def open_task(name: str, data_root: str | os.PathLike | None = None, version: str | None = None, *,
              image_root: str | os.PathLike | None = None) -> Task:
    """Task ``name`` at ``version`` (a result file's ``task_version``; None: the current one).

    A task whose generator keeps older versions (``versions`` class attribute) is built at the
    requested one; any other version mismatch is a clear error rather than silently scoring a run
    against different data. ``image_root`` (a run's recorded ``--image-root``) is passed to tasks
    whose images live in another folder; a task that reads its images from its data root refuses it.
    """
    import inspect

    from medbench.registry import TASKS

    cls = TASKS.get(name)
    kwargs: dict[str, Any] = {}
    if image_root is not None:
        if "image_root" not in inspect.signature(cls.__init__).parameters:
            raise DataRootError(f"{name} reads its images from its data root; it cannot take the image root "
                                f"{image_root}")
        kwargs["image_root"] = image_root
    if version is None or str(version) == str(cls.version):
        return cls(data_root=data_root, **kwargs)
    available = tuple(getattr(cls, "versions", (cls.version,)))
    if str(version) not in available:
        raise ValueError(f"{name} version {version} is not available in this medbench "
                         f"(available: {', '.join(available)})")
    return cls(data_root=data_root, version=str(version), **kwargs)
