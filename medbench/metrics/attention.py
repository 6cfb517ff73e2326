"""Attention metrics: the paper's Coverage and Intensity (spec §9, appendix D.2) and raw RoI share.

Per sample: the G×G attention grid M (already averaged over layers, heads and answer rows by the
engine) is min-max scaled to [0, 1], bilinearly upsampled to the model-input frame H×W of the
boolean RoI mask B, and scored as

    coverage  = Σ B·1[M ≥ τ] / Σ B        (τ = 0.15)
    intensity = Σ B·M / Σ B

Min-max scaling makes both measure the map's shape relative to its own extremes: a flat map and
a sharp map with the same ranking score differently. Three metrics on the raw (unscaled) map
measure where the attention goes instead. With A the raw non-negative grid upsampled bilinearly
to B's frame:

    roi_mass       = Σ B·A / Σ A           share of the answer's image attention inside the RoI
    roi_lift       = roi_mass / (Σ B / (H·W))    1.0 = no better than uniform attention
    attention_peak = max(grid) / mean(grid)      on the raw G×G grid; 1.0 = flat

All five are averaged over samples. Guards: a constant grid scales to all zeros for Coverage and
Intensity (scored, counted as ``constant_map``); a grid with NaN/inf is excluded from all five
(``nonfinite_attention``); an empty mask is excluded from all five (``empty_roi``). The raw-map
metrics exclude a grid with a negative entry (``negative_map``: not an attention distribution, so
it has no share) and a grid whose (upsampled) sum is zero (``zero_map``: no attention to share);
Coverage and Intensity still score those. No guard ever yields a NaN metric.

Upsampling is a numpy re-implementation of ``torch.nn.functional.interpolate(x, size=(H, W),
mode="bilinear", align_corners=False)`` (no antialias): source coordinate
``(dst + 0.5) * in/out - 0.5`` clamped at 0 below, neighbours ``floor`` and ``min(floor+1, in-1)``.
It runs in float64, so it matches torch's float32 result to float32 rounding, and keeps the
metrics free of a torch import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from medbench.metrics import Metric, MetricResult, mean_results, scoreable_rows

__all__ = [
    "DEFAULT_TAU",
    "AttentionMetrics",
    "RoiShare",
    "attention_protocol",
    "coverage_intensity",
    "geometry_resolution",
    "minmax_normalize",
    "roi_share",
    "upsample_bilinear",
]

DEFAULT_TAU = 0.15
METRIC_KEYS = ("coverage", "intensity", "roi_mass", "roi_lift", "attention_peak")


def attention_protocol(
    rows: str = "answer",
    heads: str = "all",
    layers: str = "all",
    tau: float = DEFAULT_TAU,
    *,
    grid: int | None = None,
    frame: tuple[int, int] | None = None,
) -> str:
    """The protocol string recorded with the scores.

    E.g. ``attn-v1:rows=answer,heads=all,layers=all,norm=minmax,upsample=bilinear,tau=0.15`` and,
    when the resolution is known, ``...,grid=16x16,frame=224x224`` (the G×G token grid and the
    H×W model-input frame the RoI mask and the upsampled map live in).
    """
    text = f"attn-v1:rows={rows},heads={heads},layers={layers},norm=minmax,upsample=bilinear,tau={tau:g}"
    if grid is not None:
        text += f",grid={int(grid)}x{int(grid)}"
    if frame is not None:
        text += f",frame={int(frame[0])}x{int(frame[1])}"
    return text


def geometry_resolution(geometry: Mapping[str, Any]) -> dict[str, Any]:
    """``{"grid": G, "frame": (H, W)}`` of a run's geometry record, for :func:`attention_protocol`."""
    from medbench.geometry import input_size

    grid = geometry.get("grid_size")
    return {"grid": None if grid is None else int(grid), "frame": input_size(dict(geometry))}


def minmax_normalize(grid: np.ndarray) -> tuple[np.ndarray, bool]:
    """Scale a finite map to [0, 1]; returns ``(scaled, was_constant)`` (constant → zeros)."""
    arr = np.asarray(grid, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    span = hi - lo
    if not span > 0.0 or not np.isfinite(span):
        return np.zeros_like(arr), True
    return (arr - lo) / span, False


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    return i0, i1, frac


def upsample_bilinear(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size = (H, W)``, as torch with ``align_corners=False``."""
    arr = np.asarray(grid, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"attention grid must be 2-D, got shape {arr.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be positive, got {size}")
    y0, y1, fy = _axis_weights(arr.shape[0], out_h)
    x0, x1, fx = _axis_weights(arr.shape[1], out_w)
    fy = fy[:, None]
    fx = fx[None, :]
    top = arr[y0][:, x0] * (1.0 - fx) + arr[y0][:, x1] * fx
    bottom = arr[y1][:, x0] * (1.0 - fx) + arr[y1][:, x1] * fx
    return top * (1.0 - fy) + bottom * fy


def _checked(grid: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(float grid, boolean mask)``; ``ValueError`` for non-2-D input, NaN/inf or an empty mask."""
    arr = np.asarray(grid, dtype=np.float64)
    roi = np.asarray(mask) != 0
    if arr.ndim != 2 or roi.ndim != 2:
        raise ValueError(f"grid and mask must be 2-D, got {arr.shape} and {roi.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("attention grid contains NaN or inf")
    if not roi.any():
        raise ValueError("RoI mask is empty")
    return arr, roi


def coverage_intensity(grid: np.ndarray, mask: np.ndarray, tau: float = DEFAULT_TAU) -> tuple[float, float]:
    """Coverage and Intensity of one sample (min-max, upsample to the mask's frame, score).

    Raises ``ValueError`` for a non-2-D input, a non-finite grid or an empty mask; callers that
    count these cases check them first (see :class:`AttentionMetrics`).
    """
    arr, roi = _checked(grid, mask)
    area = int(roi.sum())
    scaled, _ = minmax_normalize(arr)
    m = upsample_bilinear(scaled, roi.shape)
    inside = m[roi]
    return float(np.count_nonzero(inside >= tau)) / area, float(inside.sum()) / area


class RoiShare(NamedTuple):
    """The raw-map metrics of one sample."""

    roi_mass: float
    roi_lift: float
    attention_peak: float


def _share_or_guard(arr: np.ndarray, roi: np.ndarray) -> RoiShare | str:
    """The raw-map metrics of a finite grid, or the name of the guard that excludes it."""
    if np.any(arr < 0.0):
        return "negative_map"
    up = upsample_bilinear(arr, roi.shape)
    total = float(up.sum())
    if not total > 0.0:  # all zeros (or, downsampled, zeros where the samples fall)
        return "zero_map"
    mass = float(up[roi].sum()) / total
    area_fraction = float(roi.sum()) / roi.size
    return RoiShare(mass, mass / area_fraction, float(arr.max()) / float(arr.mean()))


def roi_share(grid: np.ndarray, mask: np.ndarray) -> RoiShare:
    """``roi_mass``, ``roi_lift`` and ``attention_peak`` of one sample, from the raw grid.

    Raises ``ValueError`` where :func:`coverage_intensity` does, and for a grid with a negative
    entry or a zero sum (see the module docstring).
    """
    arr, roi = _checked(grid, mask)
    share = _share_or_guard(arr, roi)
    if isinstance(share, str):
        raise ValueError(f"attention grid has no RoI share ({share})")
    return share


class AttentionMetrics(Metric):
    """The five attention metrics over rows with ``id``, ``attention_grid`` and ``roi_mask``.

    ``attention_grid`` is a G×G array-like, ``roi_mask`` a boolean H×W array-like in the
    model-input frame. Rows with an ``error``, no grid, no mask, an empty mask or a non-finite
    grid are excluded and counted in ``counts``; constant grids are scored (as zeros) by Coverage
    and Intensity and counted; negative and zero-sum grids are left out of the raw-map metrics
    and counted. ``grid`` and ``frame``, when given, are recorded in the protocol and every row
    must have that resolution.
    """

    name: ClassVar[str] = "attention"

    def __init__(
        self,
        *,
        tau: float = DEFAULT_TAU,
        rows: str = "answer",
        heads: str = "all",
        layers: str = "all",
        grid: int | None = None,
        frame: tuple[int, int] | None = None,
        bootstrap: bool = True,
        n_resamples: int = 1000,
        seed: int = 0,
        level: float = 0.95,
    ) -> None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        self.tau = tau
        self.grid_shape = None if grid is None else (int(grid), int(grid))
        self.frame = None if frame is None else (int(frame[0]), int(frame[1]))
        self.protocol = attention_protocol(rows=rows, heads=heads, layers=layers, tau=tau, grid=grid, frame=frame)
        self.bootstrap = bootstrap
        self.n_resamples = n_resamples
        self.seed = seed
        self.level = level

    def _arrays(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The row's grid and mask; ``ValueError`` for a wrong rank or resolution."""
        arr = np.asarray(row["attention_grid"], dtype=np.float64)
        roi = np.asarray(row["roi_mask"]) != 0
        if arr.ndim != 2 or roi.ndim != 2:
            raise ValueError(f"row {row['id']!r}: grid and mask must be 2-D, got {arr.shape}, {roi.shape}")
        if self.grid_shape is not None and arr.shape != self.grid_shape:
            raise ValueError(f"row {row['id']!r}: grid {arr.shape} is not the protocol's {self.grid_shape}")
        if self.frame is not None and roi.shape != self.frame:
            raise ValueError(f"row {row['id']!r}: mask {roi.shape} is not the protocol's frame {self.frame}")
        return arr, roi

    def _prepare(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | str:
        """The row's grid and mask, or the counter of a row no attention metric can score."""
        if row.get("attention_grid") is None:
            return "missing_attention"
        if row.get("roi_mask") is None:
            return "missing_roi"
        arr, roi = self._arrays(row)
        if not np.all(np.isfinite(arr)):
            return "nonfinite_attention"
        if not roi.any():
            return "empty_roi"
        return arr, roi

    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        ok, n_errors = scoreable_rows(rows)
        counts = {
            "n_rows": len(ok) + n_errors,
            "errors": n_errors,
            "missing_attention": 0,
            "missing_roi": 0,
            "nonfinite_attention": 0,
            "empty_roi": 0,
            "constant_map": 0,
            "negative_map": 0,
            "zero_map": 0,
        }
        scores: dict[str, dict[str, float]] = {key: {} for key in METRIC_KEYS}
        for row in ok:
            prepared = self._prepare(row)
            if isinstance(prepared, str):
                counts[prepared] += 1
                continue
            arr, roi = prepared
            rid = row["id"]
            if minmax_normalize(arr)[1]:
                counts["constant_map"] += 1
            scores["coverage"][rid], scores["intensity"][rid] = coverage_intensity(arr, roi, self.tau)
            share = _share_or_guard(arr, roi)
            if isinstance(share, str):
                counts[share] += 1
                continue
            for key, value in share._asdict().items():
                scores[key][rid] = value
        return mean_results(scores, protocol=self.protocol, counts=counts, bootstrap=self.bootstrap,
                            n_resamples=self.n_resamples, seed=self.seed, level=self.level)
