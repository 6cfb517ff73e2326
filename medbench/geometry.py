"""Pixel → model-input-frame geometry, shared by backbones and by model-free re-scoring.

A geometry record (written to each run's ``run.json``) names the preprocessing mode and its
sizes, so ``medbench score`` maps RoIs exactly as the backbone mapped the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from medbench.types import RoI


def resize_shortest_center_crop(image: Image.Image, shortest_edge: int, crop: tuple[int, int],
                                resample: int) -> Image.Image:
    """Resize so the shortest edge is ``shortest_edge``, then centre-crop to ``crop`` (h, w)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = shortest_edge, int(shortest_edge * h / w)
    else:
        new_w, new_h = int(shortest_edge * w / h), shortest_edge
    image = image.resize((new_w, new_h), resample=resample)
    crop_h, crop_w = crop
    left = int(round((new_w - crop_w) / 2.0))
    top = int(round((new_h - crop_h) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def apply_geometry(image: Image.Image, geometry: dict[str, Any], resample: int) -> Image.Image:
    mode = geometry.get("mode", "resize_shortest+center_crop")
    if mode != "resize_shortest+center_crop":
        raise ValueError(f"unknown geometry mode {mode!r}")
    return resize_shortest_center_crop(image, int(geometry["shortest_edge"]), tuple(geometry["crop"]), resample)


def roi_in_frame(roi: RoI, image_size: tuple[int, int], geometry: dict[str, Any]) -> np.ndarray:
    """Boolean RoI mask in the model-input frame (nearest resampling of the pixel mask)."""
    width, height = image_size
    mask = Image.fromarray(roi.to_mask(width, height).astype(np.uint8) * 255)
    return np.asarray(apply_geometry(mask, geometry, Image.NEAREST)) > 127
