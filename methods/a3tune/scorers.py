"""Segment-vs-prompt scorers (Eq. 3): ``Scorer.score(crops, text) -> 100·cos`` per crop.

- ``biomedclip``: BiomedCLIP through open_clip from a local folder (``biomedclip_dir=``; the
  ``weak-labels`` extra; offline via ``local-dir:`` once :func:`prepare_biomedclip` /
  ``medbench weak-labels prepare-biomedclip SRC DST`` has pointed the text tower at a local config).
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
from medbench.methods.a3tune.segmenters import Felzenszwalb, WeightFileError, keep_segment
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


BIOMEDCLIP_HUB = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT_HUB = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
#: open_clip's own look-up order for a local folder's CLIP weights.
CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json",
                   "added_tokens.json")
TEXT_DIR = "text"
PREPARED = "medbench_prepared.json"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    import json

    if not path.is_file():
        raise WeightFileError(f"{path} not found: expected {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightFileError(f"{path} is not valid JSON ({exc}): expected {what}") from None
    if not isinstance(data, dict):
        raise WeightFileError(f"{path} holds a {type(data).__name__}, not an object: expected {what}")
    return data


def _text_cfg(config: dict[str, Any], path: Path) -> dict[str, Any]:
    text = config.get("model_cfg", {}).get("text_cfg") if isinstance(config.get("model_cfg"), dict) else None
    if not isinstance(text, dict) or not text.get("hf_model_name"):
        raise WeightFileError(f"{path} has no model_cfg.text_cfg.hf_model_name: expected BiomedCLIP's open_clip "
                              "config (a Hugging Face text tower)")
    return text


def _clip_weights(folder: Path) -> Path:
    for name in CLIP_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise WeightFileError(f"{folder} has no CLIP weights: expected {' or '.join(CLIP_WEIGHTS)} (BiomedCLIP ships "
                          "open_clip_pytorch_model.bin)")


def _check_tokenizer(folder: Path) -> None:
    if not (folder / "tokenizer_config.json").is_file() or not any(
            (folder / n).is_file() for n in ("vocab.txt", "tokenizer.json")):
        raise WeightFileError(f"{folder} is missing its tokenizer: expected tokenizer_config.json and vocab.txt or "
                              f"tokenizer.json (BiomedBERT's, from {BIOMEDCLIP_HUB})")


def check_biomedclip_dir(folder: Path) -> dict[str, Any]:
    """Validate a prepared BiomedCLIP folder without loading it; returns its open_clip config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightFileError(f"scorer biomedclip needs a local open_clip folder: biomedclip_dir=<dir> (got {folder}); "
                              "prepare one with `medbench weak-labels prepare-biomedclip SRC DST`")
    config_path = folder / "open_clip_config.json"
    config = _read_json(config_path, "BiomedCLIP's open_clip_config.json")
    text = _text_cfg(config, config_path)
    _clip_weights(folder)
    _check_tokenizer(folder)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text.get(key)
        if name and not (Path(name) / "config.json").is_file():
            raise WeightFileError(f"{config_path}: text_cfg.{key} is {name!r}, not a local folder with config.json, "
                                  "so open_clip would need the network; run `medbench weak-labels prepare-biomedclip "
                                  f"{folder} DST` and use DST")
    return config


def prepare_biomedclip(src: Path, dst: Path, text_config: Path | None = None, force: bool = False) -> Path:
    """Turn a downloaded BiomedCLIP folder into one open_clip's ``local-dir:`` loads offline.

    ``src`` holds ``open_clip_config.json``, ``open_clip_pytorch_model.bin`` and the tokenizer files;
    ``text_config`` (a file or a folder with ``config.json``; default ``src/config.json``) is
    BiomedBERT's model config. ``dst`` gets the weights (hard link when possible), the tokenizer
    files, ``text/config.json`` and an ``open_clip_config.json`` whose text tower names
    ``dst/text`` (absolute; run again after moving ``dst``). Built in a temporary folder, renamed
    into place, then loaded once; nothing is left behind on failure.
    """
    import json
    import os
    import shutil
    import tempfile

    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise WeightFileError(f"{src} is not a folder: expected the BiomedCLIP download ({BIOMEDCLIP_HUB})")
    config_path = src / "open_clip_config.json"
    config = _read_json(config_path, "BiomedCLIP's open_clip_config.json")
    text = _text_cfg(config, config_path)
    weights = _clip_weights(src)
    _check_tokenizer(src)
    text_config = Path(text_config).expanduser() if text_config else src / "config.json"
    if text_config.is_dir():
        text_config = text_config / "config.json"
    bert = _read_json(text_config, f"the text model's config.json (BiomedBERT, {BIOMEDBERT_HUB})")
    if "model_type" not in bert:
        raise WeightFileError(f"{text_config} has no model_type: expected the text model's config.json "
                              f"(BiomedBERT, {BIOMEDBERT_HUB}), not {sorted(bert)[:4]}")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise WeightFileError(f"{dst} exists and is not empty: choose another destination or pass --force")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        try:
            os.link(weights, tmp / weights.name)
        except OSError:
            shutil.copy2(weights, tmp / weights.name)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        (tmp / TEXT_DIR).mkdir()
        (tmp / TEXT_DIR / "config.json").write_text(json.dumps(bert, indent=1), encoding="utf-8")
        original = {k: text.get(k) for k in ("hf_model_name", "hf_tokenizer_name")}
        text["hf_model_name"] = text["hf_tokenizer_name"] = str(dst / TEXT_DIR)
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        (tmp / PREPARED).write_text(json.dumps({"source": str(src), "text_config": str(text_config),
                                                "replaced": original}, indent=1), encoding="utf-8")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        BiomedClipScorer(str(dst))
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    return dst


class BiomedClipScorer:
    """BiomedCLIP (open_clip) from a prepared local folder, 100·cos of L2-normalised features."""

    name = "biomedclip"
    needs_gt = False

    def __init__(self, folder: str | None, device: str = "cpu"):
        from medbench.hashing import sha256_file, sha256_obj

        if not folder:
            raise WeightFileError("scorer biomedclip needs a local open_clip folder: biomedclip_dir=<dir with "
                                  "open_clip_config.json, weights and tokenizer files> (got None); prepare one with "
                                  "`medbench weak-labels prepare-biomedclip SRC DST`")
        path = Path(folder).expanduser()
        config = check_biomedclip_dir(path)
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError("scorer biomedclip needs the weak-labels extra: pip install 'medbench[weak-labels]' "
                              "(open_clip_torch)") from exc
        import torch

        self.folder, self.device, self._torch = str(path), device, torch
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                f"local-dir:{path}", pretrained_text=False, weights_only=True)
            self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightFileError(f"BiomedCLIP folder {path} does not load with open_clip "
                                  f"(weights {_clip_weights(path).name} vs open_clip_config.json): {first}") from None
        self.model.to(device).eval()
        self._fp = {"name": self.name, "weights": sha256_file(_clip_weights(path))[:16],
                    "config": sha256_obj(config["model_cfg"])[:16]}

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fp)

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
