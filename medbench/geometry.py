"""Pixel → model-input-frame geometry, shared by backbones and by model-free re-scoring.

A geometry record (written to each run's ``run.json``) names the preprocessing mode and its
sizes, so ``medbench score`` maps RoIs exactly as the backbone mapped the image. Modes:

- ``resize_shortest+center_crop`` — ``{"shortest_edge": T, "crop": [T, T], "grid_size": G}``:
  shortest edge to T (the long edge becomes ``int(T·long/short)``), then a centre crop with offset
  ``(W'−T)//2``, as CLIP's processor does (tiny-med-llava, LLaVA-Med v1 at T 224, G 16).
- ``pad_square+resize`` — ``{"size": T, "grid_size": G, "fill_rgb": [r, g, b], "fill_l": l}``:
  paste on an ``S = max(W, H)`` square at the fixed offset ``((S−W)//2, (S−H)//2)`` filled with the
  CLIP mean colour, then resize to T×T (LLaVA-Med v1.5 and HuatuoGPT-Vision at T 336, G 24).
  ``fill_l`` is the grey used for mode-``L`` images (``None``: convert to RGB first).

Boxes given to :func:`map_box` are ``[x, y, w, h]`` in continuous source pixels; cell ``(r, c)``
covers model pixels ``[p·c, p·c+p) × [p·r, p·r+p)`` with ``p = T / G``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from medbench.types import RoI

CROP = "resize_shortest+center_crop"
PAD = "pad_square+resize"
MODES = (CROP, PAD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_MEAN_RGB = (122, 116, 104)
CLIP_MEAN_L = 114


def crop_geometry(size: int, grid_size: int) -> dict[str, Any]:
    """The record of a shortest-edge resize + centre crop to ``size``."""
    return {"mode": CROP, "shortest_edge": size, "crop": [size, size], "grid_size": grid_size}


def pad_geometry(size: int, grid_size: int, fill_rgb: tuple[int, int, int] = CLIP_MEAN_RGB,
                 fill_l: int | None = CLIP_MEAN_L) -> dict[str, Any]:
    """The record of a pad-to-square (CLIP mean colour, fixed centre offset) + resize to ``size``."""
    return {"mode": PAD, "size": size, "grid_size": grid_size, "fill_rgb": list(fill_rgb), "fill_l": fill_l}


def input_size(geometry: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the model-input frame."""
    if geometry.get("mode", CROP) == PAD:
        return int(geometry["size"]), int(geometry["size"])
    h, w = geometry["crop"]
    return int(h), int(w)


def _resized(w: int, h: int, shortest_edge: int) -> tuple[int, int]:
    if w <= h:
        return shortest_edge, int(shortest_edge * h / w)
    return int(shortest_edge * w / h), shortest_edge


def resize_shortest_center_crop(image: Image.Image, shortest_edge: int, crop: tuple[int, int],
                                resample: int) -> Image.Image:
    """Resize so the shortest edge is ``shortest_edge``, then centre-crop to ``crop`` (h, w)."""
    new_w, new_h = _resized(*image.size, shortest_edge)
    image = image.resize((new_w, new_h), resample=resample)
    crop_h, crop_w = crop
    left = (new_w - crop_w) // 2
    top = (new_h - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h))


def pad_offset(width: int, height: int) -> tuple[int, int, int]:
    """``(S, ox, oy)``: the square side and the fixed paste offset of a ``width``×``height`` image."""
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def pad_to_square(image: Image.Image, fill: int | tuple[int, ...]) -> Image.Image:
    """``image`` pasted on a square canvas of its mode at the fixed centre offset."""
    side, ox, oy = pad_offset(*image.size)
    if image.size == (side, side):
        return image.copy()
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, (ox, oy))
    return canvas


def pad_image(image: Image.Image, geometry: dict[str, Any]) -> Image.Image:
    """A model image padded as the geometry says (mode ``L`` keeps its grey when ``fill_l`` is set); RGB out."""
    if image.mode == "L" and geometry.get("fill_l") is not None:
        return pad_to_square(image, int(geometry["fill_l"])).convert("RGB")
    return pad_to_square(image.convert("RGB"), tuple(int(v) for v in geometry["fill_rgb"]))


def apply_geometry(image: Image.Image, geometry: dict[str, Any], resample: int,
                   fill: int | tuple[int, ...] = 0) -> Image.Image:
    """``image`` in the model-input frame; ``fill`` pads (0 suits RoI masks)."""
    mode = geometry.get("mode", CROP)
    if mode == CROP:
        return resize_shortest_center_crop(image, int(geometry["shortest_edge"]), tuple(geometry["crop"]), resample)
    if mode == PAD:
        size = int(geometry["size"])
        return pad_to_square(image, fill).resize((size, size), resample=resample)
    raise ValueError(f"unknown geometry mode {mode!r}; known: {', '.join(MODES)}")


def roi_in_frame(roi: RoI, image_size: tuple[int, int], geometry: dict[str, Any]) -> np.ndarray:
    """Boolean RoI mask in the model-input frame (nearest resampling of the pixel mask)."""
    width, height = image_size
    mask = Image.fromarray(roi.to_mask(width, height).astype(np.uint8) * 255)
    return np.asarray(apply_geometry(mask, geometry, Image.NEAREST)) > 127


def map_box(box_xywh: tuple[float, float, float, float], image_size: tuple[int, int],
            geometry: dict[str, Any]) -> tuple[tuple[float, float, float, float], float]:
    """``((x1', y1', x2', y2'), roi_visible_fraction)``: a source box in model pixels, clipped to the frame."""
    x, y, w, h = (float(v) for v in box_xywh)
    width, height = image_size
    mode = geometry.get("mode", CROP)
    if mode == CROP:
        size_h, size_w = input_size(geometry)
        new_w, new_h = _resized(width, height, int(geometry["shortest_edge"]))
        cx, cy = (new_w - size_w) // 2, (new_h - size_h) // 2
        sx, sy = new_w / width, new_h / height
        raw = (x * sx - cx, y * sy - cy, (x + w) * sx - cx, (y + h) * sy - cy)
    elif mode == PAD:
        size_h = size_w = int(geometry["size"])
        side, ox, oy = pad_offset(width, height)
        s = size_w / side
        raw = ((x + ox) * s, (y + oy) * s, (x + w + ox) * s, (y + h + oy) * s)
    else:
        raise ValueError(f"unknown geometry mode {mode!r}; known: {', '.join(MODES)}")
    clipped = (min(max(raw[0], 0.0), size_w), min(max(raw[1], 0.0), size_h),
               min(max(raw[2], 0.0), size_w), min(max(raw[3], 0.0), size_h))
    area = (raw[2] - raw[0]) * (raw[3] - raw[1])
    visible = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
    return clipped, (visible / area if area > 0 else 0.0)


def _cell(geometry: dict[str, Any]) -> float:
    return input_size(geometry)[1] / int(geometry["grid_size"])


def box_cells(box: tuple[float, float, float, float], geometry: dict[str, Any]) -> tuple[range, range]:
    """``(rows, cols)`` of the grid cells a model-pixel box ``(x1, y1, x2, y2)`` touches."""
    p = _cell(geometry)
    x1, y1, x2, y2 = box
    rows = range(math.floor(y1 / p), math.ceil(y2 / p))
    cols = range(math.floor(x1 / p), math.ceil(x2 / p))
    return rows, cols


def box_coverage(box: tuple[float, float, float, float], geometry: dict[str, Any]) -> np.ndarray:
    """G×G fraction of each cell's area inside a model-pixel box (a cell is in-RoI at ≥ 0.5)."""
    g = int(geometry["grid_size"])
    p = _cell(geometry)
    edges = np.arange(g + 1) * p
    x1, y1, x2, y2 = box
    ox = np.clip(np.minimum(edges[1:], x2) - np.maximum(edges[:-1], x1), 0, None) / p
    oy = np.clip(np.minimum(edges[1:], y2) - np.maximum(edges[:-1], y1), 0, None) / p
    return oy[:, None] * ox[None, :]


def content_box(image_size: tuple[int, int], geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    """The image content in model pixels (the whole frame for crop geometry)."""
    width, height = image_size
    return map_box((0.0, 0.0, float(width), float(height)), image_size, geometry)[0]


def pad_token_cells(image_size: tuple[int, int], geometry: dict[str, Any]) -> np.ndarray:
    """G×G booleans: cells lying wholly in the padding (never true for crop geometry)."""
    return box_coverage(content_box(image_size, geometry), geometry) == 0.0


GRID_RULES = ("area50_max", "area50", "nearest_ref", "any")


def frame_to_grid(frame: np.ndarray, grid: int, rule: str) -> np.ndarray:
    """Token-grid membership [G·G] of a model-frame mask (token k = cell (k // G, k % G)).

    Each cell's area fraction a_p inside the mask decides: ``area50``: a_p ≥ 0.5 (A³TUNE's rule);
    ``area50_max`` (default): ``area50``, or, when no cell reaches 0.5, the cell(s) with the largest
    a_p, so a non-empty RoI never vanishes from a coarse grid; ``any``: a_p > 0; ``nearest_ref``:
    nearest resampling of the frame to G×G (the reference's ``Resize(G, NEAREST)``).
    """
    if rule not in GRID_RULES:
        raise ValueError(f"unknown grid rule {rule!r}; known: {', '.join(GRID_RULES)}")
    if rule == "nearest_ref":
        img = Image.fromarray(frame.astype(np.uint8) * 255).resize((grid, grid), Image.NEAREST)
        return (np.asarray(img) > 127).reshape(-1)
    h, w = frame.shape
    frac = frame.astype(np.float32).reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3)).reshape(-1)
    if rule == "any":
        return frac > 0
    cells = frac >= 0.5
    if rule == "area50_max" and not cells.any() and frac.max() > 0:
        cells = frac == frac.max()
    return cells


def mask_to_grid(mask: np.ndarray, geometry: dict[str, Any], rule: str) -> np.ndarray:
    """A source-pixel mask through the backbone's preprocessing geometry onto its token grid."""
    frame = np.asarray(apply_geometry(Image.fromarray(mask.astype(np.uint8) * 255), geometry, Image.NEAREST)) > 127
    return frame_to_grid(frame, int(geometry["grid_size"]), rule)
