"""Segment proposals for the weak labels (§4.1): SAM, or classical segmenters for the embedded tier.

``Segmenter.segment(rgb_uint8) -> list[Segment]`` returns raw proposals; filtering happens at
scoring time (:func:`keep_segment`) so one segment cache serves every filter. Backends:

- ``sam``: segment-anything's automatic mask generator with the reference settings (optional
  dependency; a local checkpoint file via ``sam_checkpoint=``), on the original RGB image or, as
  the reference did, a 256×256 stretch (``sam_input=ref256``).
- ``felzenszwalb`` (scale 200, σ 0.8, min size 0.3 % of the pixels) and ``slic`` (24 segments,
  compactness 10): scikit-image, no downloads; disjoint segments (SAM's overlap and nest).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Reference thresholds as image fractions (spec §1.1).
MIN_REGION = 0.00305
MAX_AREA = 0.61
MIN_SIDE = 0.047
MAX_EDGE = 0.988


@dataclass
class Segment:
    """One proposal in source pixels."""

    mask: np.ndarray
    bbox_xywh: tuple[int, int, int, int]
    area: int
    predicted_iou: float = 1.0
    stability_score: float = 1.0


class Segmenter(Protocol):
    name: str

    def fingerprint(self) -> dict[str, Any]: ...

    def segment(self, rgb: np.ndarray) -> list[Segment]: ...


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return (0, 0, 0, 0)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def from_mask(mask: np.ndarray, predicted_iou: float = 1.0, stability: float = 1.0) -> Segment:
    mask = np.asarray(mask, dtype=bool)
    return Segment(mask, _bbox(mask), int(mask.sum()), float(predicted_iou), float(stability))


def from_label_image(labels: np.ndarray) -> list[Segment]:
    """One segment per label value of a label image (in label order)."""
    return [from_mask(labels == value) for value in np.unique(labels)]


def keep_segment(seg: Segment, width: int, height: int) -> bool:
    """The reference filter (spec §1.1) as image fractions: size, area and border rules."""
    x, y, w, h = seg.bbox_xywh
    if seg.area < MIN_REGION * width * height or seg.area >= MAX_AREA * width * height:
        return False
    if w <= MIN_SIDE * width or h <= MIN_SIDE * height:
        return False
    return not (x == 0 or y == 0 or x + w > MAX_EDGE * width or y + h > MAX_EDGE * height)


@dataclass(frozen=True)
class Felzenszwalb:
    """``skimage.segmentation.felzenszwalb(img, scale, sigma, min_size=min_frac·pixels)``."""

    scale: float = 200.0
    sigma: float = 0.8
    min_frac: float = 0.003
    name: str = "felzenszwalb"

    def fingerprint(self) -> dict[str, Any]:
        return {**asdict(self), "v": 1}

    def segment(self, rgb: np.ndarray) -> list[Segment]:
        from skimage.segmentation import felzenszwalb

        min_size = max(1, int(self.min_frac * rgb.shape[0] * rgb.shape[1]))
        return from_label_image(felzenszwalb(rgb, scale=self.scale, sigma=self.sigma, min_size=min_size))


@dataclass(frozen=True)
class Slic:
    """``skimage.segmentation.slic(img, n_segments, compactness, start_label=1)``."""

    n_segments: int = 24
    compactness: float = 10.0
    name: str = "slic"

    def fingerprint(self) -> dict[str, Any]:
        return {**asdict(self), "v": 1}

    def segment(self, rgb: np.ndarray) -> list[Segment]:
        from skimage.segmentation import slic

        return from_label_image(slic(rgb, n_segments=self.n_segments, compactness=self.compactness, start_label=1))


SAM_SETTINGS = dict(points_per_side=8, points_per_batch=128, pred_iou_thresh=0.5, stability_score_thresh=0.5,
                    box_nms_thresh=0.8, crop_n_layers=1, crop_nms_thresh=0.8, crop_n_points_downscale_factor=2)


class Sam:
    """segment-anything's automatic mask generator with the reference settings (spec §1.1)."""

    name = "sam"

    def __init__(self, checkpoint: str | None, arch: str = "vit_h", input_mode: str = "rgb", device: str = "cpu"):
        checkpoint = str(Path(checkpoint).expanduser()) if checkpoint else None
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"segmenter sam needs a local checkpoint file: sam_checkpoint=<path to "
                                    f"sam_vit_h_4b8939.pth> (got {checkpoint!r})")
        try:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as exc:
            raise ImportError("segmenter sam needs the optional package segment-anything "
                              "(pip install segment-anything opencv-python-headless)") from exc
        self.checkpoint, self.arch, self.input_mode = str(checkpoint), arch, input_mode
        model = sam_model_registry[arch](checkpoint=self.checkpoint).to(device)
        self._generator_cls = SamAutomaticMaskGenerator
        self._model = model

    def fingerprint(self) -> dict[str, Any]:
        from medbench.hashing import sha256_file

        return {"name": self.name, "arch": self.arch, "input": self.input_mode, "settings": SAM_SETTINGS,
                "min_region": MIN_REGION, "weights": sha256_file(self.checkpoint)[:16], "v": 1}

    def segment(self, rgb: np.ndarray) -> list[Segment]:
        from PIL import Image

        height, width = rgb.shape[:2]
        image = rgb
        if self.input_mode == "ref256":
            image = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR))[..., ::-1].copy()
        min_area = int(MIN_REGION * image.shape[0] * image.shape[1])
        generator = self._generator_cls(self._model, min_mask_region_area=min_area, **SAM_SETTINGS)
        out = []
        for m in generator.generate(image):
            mask = m["segmentation"]
            if mask.shape != (height, width):
                mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127
            out.append(from_mask(mask, m.get("predicted_iou", 1.0), m.get("stability_score", 1.0)))
        return out


def make_segmenter(name: str, *, sam_checkpoint: str | None = None, sam_input: str = "rgb",
                   device: str = "cpu") -> Any:
    """A segmenter by name: ``sam``, ``felzenszwalb`` or ``slic``."""
    if name == "felzenszwalb":
        return Felzenszwalb()
    if name == "slic":
        return Slic()
    if name == "sam":
        return Sam(sam_checkpoint, input_mode=sam_input, device=device)
    raise ValueError(f"unknown segmenter {name!r}; known: sam, felzenszwalb, slic")


def save_segments(path: Path, segments: list[Segment], shape: tuple[int, int]) -> None:
    """Atomic ``.npz``: packed masks [n, H, W], shape, bbox_xywh, area, predicted_iou, stability_score."""
    from medbench.atomic import atomic_write_bytes

    masks = np.stack([s.mask for s in segments]) if segments else np.zeros((0, *shape), dtype=bool)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, masks=np.packbits(masks.reshape(len(segments), -1), axis=1), shape=np.array(shape),
        bbox_xywh=np.array([s.bbox_xywh for s in segments], dtype=np.int64).reshape(-1, 4),
        area=np.array([s.area for s in segments], dtype=np.int64),
        predicted_iou=np.array([s.predicted_iou for s in segments], dtype=np.float32),
        stability_score=np.array([s.stability_score for s in segments], dtype=np.float32),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_segments(path: Path) -> list[Segment]:
    with np.load(path) as data:
        h, w = (int(v) for v in data["shape"])
        n = len(data["area"])
        masks = np.unpackbits(data["masks"], axis=1, count=h * w).reshape(n, h, w).astype(bool)
        return [Segment(masks[i], tuple(int(v) for v in data["bbox_xywh"][i]), int(data["area"][i]),
                        float(data["predicted_iou"][i]), float(data["stability_score"][i])) for i in range(n)]
