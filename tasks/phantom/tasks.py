"""The ``phantom-vqa`` and ``phantom-report`` tasks: load a verified generated split as samples."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from medbench.task import Task
from medbench.tasks.phantom.cache import (
    CURRENT_VERSION,
    SPLITS,
    SPLITS_BY_VERSION,
    VERSIONS,
    PhantomConfig,
    ensure_split,
    generator,
)
from medbench.types import AnswerType, RoI, Sample

DEFAULT_IMAGES: dict[str, dict[str, int]] = {  # images per split, by generator version
    "2": {"pretrain": 2000, "train": 500, "test": 200},
    "3": {"pretrain": 2000, "train": 600, "val": 150, "test": 250},
}
QUESTIONS_PER_IMAGE = 3


class _PhantomTask(Task):
    """Shared loader: both tasks read the same generated images, masks and manifest."""

    embedded = True
    version = CURRENT_VERSION
    versions: ClassVar[tuple[str, ...]] = VERSIONS
    splits = SPLITS
    eval_split = "test"
    train_split = "train"
    expected_layout = (
        "nothing to download: generated on first use under $MEDBENCH_CACHE (default ~/.cache/medbench)"
        "/phantom/v<version>-<hash>/<split>/{manifest.json,images/,masks/}"
    )
    section: ClassVar[str]

    def __init__(
        self,
        data_root: str | os.PathLike | None = None,
        n_images: Mapping[str, int] | None = None,
        seed: int = 0,
        questions_per_image: int = QUESTIONS_PER_IMAGE,
        verify: str = "full",
        version: str | int = CURRENT_VERSION,
    ):
        """``n_images`` overrides the images per split (defaults: ``DEFAULT_IMAGES[version]``); ``data_root``
        is accepted for interface compatibility and unused (data go to ``cache_dir``); ``verify`` is
        ``"full"`` (sha256 of every file once per process) or ``"size"``; ``version`` selects the
        generator (``"3"``, the default, or the frozen ``"2"`` for old result files)."""
        super().__init__(data_root)
        if str(version) not in VERSIONS:
            raise ValueError(f"phantom version must be one of {', '.join(VERSIONS)}, got {version!r}")
        sizes = dict(DEFAULT_IMAGES[str(version)])
        self.splits = SPLITS_BY_VERSION[str(version)]
        for split, n in (n_images or {}).items():
            if split not in self.splits or int(n) < 1:
                raise ValueError(f"n_images: expected positive counts for {self.splits}, got {split!r}={n!r}")
            sizes[split] = int(n)
        if questions_per_image < 1 or verify not in ("full", "size"):
            raise ValueError("questions_per_image must be >= 1 and verify 'full' or 'size'")
        self.version = str(version)
        self.config = PhantomConfig(tuple(sorted(sizes.items())), int(seed), int(questions_per_image),
                                    self.version)
        self.verify = verify

    @classmethod
    def default_data_root(cls) -> Path | None:
        return None

    @property
    def root(self) -> Path:
        return self.config.root()

    def load(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits {self.splits}, not {split!r}")
        split_dir, manifest = ensure_split(self.config, split, self.verify)
        samples = [
            Sample(
                id=e["id"],
                image_path=str(split_dir / e["image"]),
                question=e["question"],
                answer=e["answer"],
                answer_type=AnswerType(e["answer_type"]),
                split=split,
                roi=RoI(mask_path=str(split_dir / e["roi"]["mask"]), label=e["roi"]["label"]),
                meta={**e["meta"], "roi_fraction": e["roi"]["fraction"]},
            )
            for e in manifest[self.section]
        ]
        return sorted(samples, key=lambda s: s.id)

    def findings(self, split: str) -> dict[str, Any]:
        """The structured truth of every image of ``split`` by image id (from the verified manifest)."""
        _, manifest = ensure_split(self.config, split, self.verify)
        return {e["id"]: e["findings"] for e in manifest["images"]}


class PhantomVQA(_PhantomTask):
    """Synthetic SLAKE-like VQA with a question-dependent pixel RoI for every question."""

    name = "phantom-vqa"
    kind = "vqa"
    metric_protocol = "llava_med"
    section = "vqa"


class PhantomReport(_PhantomTask):
    """Synthetic report generation, one report per image.

    The RoI is the union of the abnormal regions (dilated lesions and enlarged structures) when
    there are any, else the organs a normal report describes.
    """

    name = "phantom-report"
    kind = "report"
    metric_protocol = "coco"
    section = "report"

    def metric_families(self) -> dict[str, Callable[[int], Any]]:
        """Finding-F1 with this version's finding labeler (``phantom-findings-v<version>``)."""
        return {"phantom_findings": generator(self.version).finding_metric}
