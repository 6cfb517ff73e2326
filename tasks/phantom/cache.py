"""The phantom cache: build a split once, verify it on every load, rebuild what fails.

Data live in ``cache_dir("phantom", "v<version>-<hash of sizes, seed, questions per image>")/<split>/``:
``images/*.png`` (RGB 256×256), ``masks/*.png`` (1-bit) and ``manifest.json`` (every sample, the
sha256 and size of every file, and a checksum of the manifest itself). The generator version is in
both the path and the manifest, so a cache of one version is never read as another. A split is
generated on first use into a temporary directory that is renamed into place after the manifest is
written, so a half-built cache is never trusted; a manifest or file that fails verification is
rebuilt, as is one written by different generator source code (a safety net for a forgotten
version bump). Pixels depend only on the generator version, the seed, the split and the index (the
manifest records a sha256 of the raw pixels; PNG bytes may differ across zlib versions).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from medbench.atomic import atomic_write_json
from medbench.hashing import sha256_file, sha256_obj
from medbench.paths import cache_dir
from medbench.types import AnswerType

log = logging.getLogger(__name__)

VERSIONS = ("2", "3")
CURRENT_VERSION = "3"
SPLITS = ("pretrain", "train", "val", "test")
#: The splits each generator version has: v3 adds ``val`` (its own image stream, for choosing
#: hyperparameters without touching test); the frozen v2 keeps the three it was released with.
SPLITS_BY_VERSION = {"2": ("pretrain", "train", "test"), "3": SPLITS}
STALE_BUILD_S = 6 * 3600


def generator(version: str) -> ModuleType:
    """The generator module of ``version`` (``VERSION``, ``SOURCE_SHA256``, ``render``)."""
    if str(version) not in VERSIONS:
        raise ValueError(f"unknown phantom version {version!r}; available: {', '.join(VERSIONS)}")
    return importlib.import_module(f"medbench.tasks.phantom.v{version}")


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that determines the generated data; its hash names the cache directory."""

    n_images: tuple[tuple[str, int], ...]
    seed: int = 0
    questions_per_image: int = 3
    version: str = CURRENT_VERSION

    def to_json(self, split: str) -> dict[str, Any]:
        return {
            "generator_version": self.version,
            "n_images": dict(self.n_images),
            "seed": self.seed,
            "questions_per_image": self.questions_per_image,
            "split": split,
            "source_sha256": generator(self.version).SOURCE_SHA256,
        }

    def root(self) -> Path:
        key = sha256_obj(
            {
                "n_images": dict(self.n_images),
                "seed": self.seed,
                "questions_per_image": self.questions_per_image,
            }
        )[:12]
        return cache_dir("phantom", f"v{self.version}-{key}")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _SplitWriter:
    """Writes files into a split directory under construction and records their hashes."""

    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, dict[str, Any]] = {}
        (out / "images").mkdir(parents=True)
        (out / "masks").mkdir()

    def write(self, rel: str, data: bytes) -> None:
        (self.out / rel).write_bytes(data)
        self.files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def roi(self, image_id: str, key: str, mask: np.ndarray) -> dict[str, Any]:
        """Write the mask once per (image, key); return the manifest's RoI entry."""
        rel = f"masks/{image_id}-{key}.png"
        if rel not in self.files:
            if not mask.any():
                raise RuntimeError(f"empty RoI {key!r} for {image_id}")
            self.write(rel, _png(mask))
        return {"mask": rel, "label": key, "fraction": round(int(mask.sum()) / mask.size, 4)}


def _build_split(out: Path, split: str, config: PhantomConfig) -> None:
    """Generate every image, mask, question and report of ``split`` into ``out``; manifest last."""
    render = generator(config.version).render
    writer = _SplitWriter(out)
    n = dict(config.n_images)[split]
    width = max(5, len(str(n - 1)))
    images, vqa, reports = [], [], []
    for index in range(n):
        image_id = f"{split}-{index:0{width}d}"
        r = render(config.seed, split, index, config.questions_per_image)
        image_rel = f"images/{image_id}.png"
        writer.write(image_rel, _png(r.image))
        base_meta = {**r.meta, "image_id": image_id}
        for j, (qtype, qa) in enumerate(r.questions):
            meta = {**base_meta, "content_type": qa.content_type, "question_type": qtype}
            if qa.organ is not None:
                meta["organ"] = qa.organ
            vqa.append(
                {
                    "id": f"{image_id}-q{j}",
                    "image": image_rel,
                    "question": qa.question,
                    "answer": qa.answer,
                    "answer_type": qa.answer_type.value,
                    "roi": writer.roi(image_id, qa.roi, r.masks[qa.roi]),
                    "meta": meta,
                }
            )
        reports.append(
            {
                "id": f"{image_id}-report",
                "image": image_rel,
                "question": r.report_prompt,
                "answer": r.report,
                "answer_type": AnswerType.REPORT.value,
                "roi": writer.roi(image_id, r.report_roi, r.masks[r.report_roi]),
                "meta": {**base_meta, "content_type": "report", "question_type": "report"},
            }
        )
        images.append(
            {
                "id": image_id,
                "file": image_rel,
                "pixels_sha256": hashlib.sha256(r.image.tobytes()).hexdigest(),
                "findings": r.findings,
                "artefacts": r.artefacts,
            }
        )
    manifest: dict[str, Any] = {
        "format": 1,
        "config": config.to_json(split),
        "images": images,
        "vqa": vqa,
        "report": reports,
        "files": writer.files,
    }
    manifest["checksum"] = sha256_obj(manifest)
    atomic_write_json(out / "manifest.json", manifest)


_VERIFIED: dict[str, tuple[str, tuple]] = {}


def _read_manifest(split_dir: Path, config: PhantomConfig, split: str, verify: str) -> dict[str, Any] | None:
    """The manifest if it and every file it lists check out, else None.

    The manifest's own checksum and every file's size are always checked. With ``verify="full"``
    every file's sha256 is checked too, once per process: the result is remembered with each file's
    size, inode and mtime, and only once the newest file is a few seconds old, so a same-size
    rewrite within the filesystem's timestamp granularity is still caught.
    """
    try:
        data = json.loads((split_dir / "manifest.json").read_text(encoding="utf-8"))
        body = {k: v for k, v in data.items() if k != "checksum"}
        if data.get("checksum") != sha256_obj(body) or data.get("config") != config.to_json(split):
            return None
        stats = []
        for rel, info in sorted(data["files"].items()):
            st = os.stat(split_dir / rel)
            if st.st_size != info["size"]:
                return None
            stats.append((rel, st.st_size, st.st_ino, st.st_mtime_ns))
        if verify == "full":
            signature = (data["checksum"], tuple(stats))
            if _VERIFIED.get(str(split_dir)) != signature:
                for rel, info in data["files"].items():
                    if sha256_file(split_dir / rel) != info["sha256"]:
                        return None
                if time.time() - max((s[3] for s in stats), default=0) / 1e9 > 3.0:
                    _VERIFIED[str(split_dir)] = signature
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return data


def _install(tmp: Path, final: Path, is_valid: Callable[[], bool]) -> None:
    """Rename the built ``tmp`` to ``final``, replacing an invalid ``final``; tolerate racing builders."""
    for _ in range(10):
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if is_valid():
                return
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex}")
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
    raise RuntimeError(f"could not install the phantom cache at {final}")


def ensure_split(config: PhantomConfig, split: str, verify: str = "full") -> tuple[Path, dict[str, Any]]:
    """The verified split directory and manifest, generating (or regenerating) them if needed."""
    root = config.root()
    split_dir = root / split
    data = _read_manifest(split_dir, config, split, verify)
    if data is not None:
        return split_dir, data
    if split_dir.exists():
        log.warning("phantom cache %s failed verification; rebuilding it", split_dir)
    for stale in [*root.glob(f".build-{split}-*"), *root.glob(f".trash-{split}-*")]:
        try:
            age = time.time() - stale.stat().st_mtime
        except OSError:
            continue
        if age > STALE_BUILD_S:  # left behind by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
    log.info("generating phantom split %r (%d images) in %s", split, dict(config.n_images)[split], split_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{split}-", dir=root))
    try:
        _build_split(tmp, split, config)
        _install(tmp, split_dir, lambda: _read_manifest(split_dir, config, split, verify) is not None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = _read_manifest(split_dir, config, split, verify)
    if data is None:
        raise RuntimeError(f"the phantom cache at {split_dir} failed verification right after it was built")
    return split_dir, data


