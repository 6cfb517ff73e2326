"""Segment-vs-prompt scorers (Eq. 3): ``Scorer.score(crops, text) -> 100·cos`` per crop.

- ``biomedclip``: BiomedCLIP through open_clip from a local folder (``biomedclip_dir=``; optional
  dependency; offline via ``local-dir:``).
- ``clip_small``: :mod:`~medbench.methods.a3tune.tiny_clip`, trained by medbench on the phantom
  ``pretrain`` split (disjoint from the train/test splits it labels); trained on first use and
  cached, or ``medbench weak-labels train-scorer``.
- ``random`` (seeded, deterministic per crop and text) and ``oracle`` (IoU with the GT RoI) as
  lower and upper references for the weak-label quality metric.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medbench.images import open_image
from medbench.methods.a3tune.segmenters import Felzenszwalb, keep_segment
from medbench.methods.a3tune.tiny_clip import CROP, VERSION, TinyClip, crop_segment, train_tiny_clip

log = logging.getLogger("medbench")

SCORER_IMAGES = 300
SCORER_STEPS = 400


class RandomScorer:
    """Uniform scores in [0, 100), seeded by (seed, text, crop pixels)."""

    name = "random"
    needs_gt = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}

    def score(self, crops: list[Image.Image], text: str, **_: Any) -> np.ndarray:
        out = []
        for crop in crops:
            digest = hashlib.sha256(f"{self.seed}\x1f{text}".encode() + np.asarray(crop).tobytes()).digest()
            out.append(np.random.default_rng(int.from_bytes(digest[:8], "little")).random() * 100)
        return np.array(out, dtype=np.float32)


class OracleScorer:
    """100 · IoU of each segment with the GT RoI (an upper reference, never a training default)."""

    name = "oracle"
    needs_gt = True

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name}

    def score(self, crops: list[Image.Image], text: str, *, masks: list[np.ndarray] | None = None,
              gt: np.ndarray | None = None, **_: Any) -> np.ndarray:
        if masks is None or gt is None:
            raise ValueError("scorer oracle needs the segment masks and a GT RoI for every sample")
        return np.array([100.0 * (m & gt).sum() / max(1, (m | gt).sum()) for m in masks], dtype=np.float32)


class ClipSmallScorer:
    """The medbench-trained tiny dual encoder from a local folder."""

    name = "clip_small"
    needs_gt = False

    def __init__(self, folder: Path):
        from medbench.hashing import sha256_file

        self.folder = Path(folder)
        self.model = TinyClip.load(self.folder)
        self.weights = sha256_file(self.folder / "model.safetensors")[:16]

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights}

    def score(self, crops: list[Image.Image], text: str, **_: Any) -> np.ndarray:
        return self.model.score(crops, text)


class BiomedClipScorer:
    """BiomedCLIP (open_clip) from a local folder, 100·cos of L2-normalised features."""

    name = "biomedclip"
    needs_gt = False

    def __init__(self, folder: str | None, device: str = "cpu"):
        folder = str(Path(folder).expanduser()) if folder else None
        if not folder or not Path(folder).is_dir():
            raise FileNotFoundError("scorer biomedclip needs a local open_clip folder: biomedclip_dir=<dir with "
                                    f"open_clip_config.json, weights and tokenizer files> (got {folder!r})")
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError("scorer biomedclip needs the optional package open_clip_torch") from exc
        import torch

        self.folder, self.device, self._torch = str(folder), device, torch
        weights = [p for p in Path(folder).iterdir() if p.suffix in (".bin", ".safetensors", ".pt")]
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            f"local-dir:{folder}", **({} if weights else {"pretrained_text": False}))
        self.model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")

    def fingerprint(self) -> dict[str, Any]:
        files = sorted(p.name for p in Path(self.folder).iterdir())
        return {"name": self.name, "folder": Path(self.folder).name, "files": files}

    def score(self, crops: list[Image.Image], text: str, **_: Any) -> np.ndarray:
        torch = self._torch
        if not crops:
            return np.zeros(0, dtype=np.float32)
        with torch.no_grad():
            images = torch.stack([self.preprocess(c) for c in crops]).to(self.device)
            img = torch.nn.functional.normalize(self.model.encode_image(images), dim=-1)
            txt = torch.nn.functional.normalize(self.model.encode_text(self.tokenizer([text]).to(self.device)), dim=-1)
        return (100.0 * (img @ txt.T)[:, 0]).float().cpu().numpy()


def scorer_training_data(n_images: int, seed: int = 0) -> tuple[list[tuple[Image.Image, str]], list[Image.Image]]:
    """(GT-crop, question) pairs and low-overlap proposal crops from the phantom ``pretrain`` split."""
    from medbench.tasks.phantom import PhantomVQA

    samples = PhantomVQA(n_images={"pretrain": n_images}, seed=seed).load("pretrain")
    segmenter = Felzenszwalb()
    pairs, negatives, seen = [], [], {}
    rng = np.random.default_rng(seed)
    for s in samples:
        rgb = np.asarray(open_image(s.image_path))
        gt = s.roi.to_mask(rgb.shape[1], rgb.shape[0])
        if gt.any():
            pairs.append((crop_segment(rgb, gt), s.question))
        if s.image_path not in seen:
            seen[s.image_path] = [g.mask for g in segmenter.segment(rgb) if keep_segment(g, rgb.shape[1], rgb.shape[0])]
        far = [m for m in seen[s.image_path] if (m & gt).sum() < 0.1 * max(1, (m | gt).sum())]
        if far:
            negatives.append(crop_segment(rgb, far[int(rng.integers(len(far)))]))
    return pairs, negatives


def default_scorer_dir(n_images: int = SCORER_IMAGES, steps: int = SCORER_STEPS, seed: int = 0) -> Path:
    from medbench.hashing import sha256_obj
    from medbench.paths import cache_dir

    arch = TinyClip().config
    fp = sha256_obj({"v": VERSION, "arch": arch, "crop": CROP, "images": n_images, "steps": steps, "seed": seed,
                     "seg": Felzenszwalb().fingerprint()})
    return cache_dir("weak_labels", "scorers") / f"clip_small-{fp[:12]}"


def train_clip_small(folder: Path | None = None, *, n_images: int = SCORER_IMAGES, steps: int = SCORER_STEPS,
                     seed: int = 0, progress: bool = True) -> Path:
    """Train ``clip_small`` and save it (atomically: a temporary folder renamed into place)."""
    import os
    import shutil
    import tempfile

    folder = Path(folder) if folder else default_scorer_dir(n_images, steps, seed)
    pairs, negatives = scorer_training_data(n_images, seed)
    model = train_tiny_clip(pairs, negatives, steps=steps, seed=seed, progress=progress)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    model.save(tmp, {"images": n_images, "steps": steps, "seed": seed, "pairs": len(pairs), "negatives": len(negatives)})
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def make_scorer(name: str, *, scorer_dir: str | None = None, biomedclip_dir: str | None = None, device: str = "cpu",
                progress: bool = True) -> Any:
    """A scorer by name; ``clip_small`` is trained on first use when no folder is given."""
    if name == "random":
        return RandomScorer()
    if name == "oracle":
        return OracleScorer()
    if name == "biomedclip":
        return BiomedClipScorer(biomedclip_dir, device)
    if name == "clip_small":
        folder = Path(scorer_dir).expanduser() if scorer_dir else default_scorer_dir()
        if not (folder / "model.safetensors").exists():
            if scorer_dir:
                raise FileNotFoundError(f"no clip_small scorer at {folder}; run `medbench weak-labels train-scorer`")
            log.info("training the clip_small scorer into %s (first use)", folder)
            train_clip_small(folder, progress=progress)
        return ClipSmallScorer(folder)
    raise ValueError(f"unknown scorer {name!r}; known: biomedclip, clip_small, random, oracle")
