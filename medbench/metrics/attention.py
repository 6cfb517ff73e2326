"""Attention Coverage and Intensity (spec §9, paper appendix D.2).

Per sample: the G×G attention grid M (already averaged over layers, heads and answer rows by the
engine) is min-max scaled to [0, 1], bilinearly upsampled to the model-input frame H×W of the
boolean RoI mask B, and scored as

    coverage  = Σ B·1[M ≥ τ] / Σ B        (τ = 0.15)
    intensity = Σ B·M / Σ B

then averaged over samples. Guards: a constant grid scales to all zeros (scored, counted as
``constant_map``); a grid with NaN/inf is excluded (``nonfinite_attention``); an empty mask is
excluded (``empty_roi``). No guard ever yields a NaN metric.

Upsampling is a numpy re-implementation of ``torch.nn.functional.interpolate(x, size=(H, W),
mode="bilinear", align_corners=False)`` (no antialias): source coordinate
``(dst + 0.5) * in/out - 0.5`` clamped at 0 below, neighbours ``floor`` and ``min(floor+1, in-1)``.
It runs in float64, so it matches torch's float32 result to float32 rounding, and keeps the
metrics free of a torch import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from medbench.metrics import Metric, MetricResult, mean_results, scoreable_rows

__all__ = [
    "DEFAULT_TAU",
    "AttentionMetrics",
    "attention_protocol",
    "coverage_intensity",
    "minmax_normalize",
    "upsample_bilinear",
]

DEFAULT_TAU = 0.15


def attention_protocol(
    rows: str = "answer", heads: str = "all", layers: str = "all", tau: float = DEFAULT_TAU
) -> str:
    """The protocol string recorded with the scores, e.g. ``attn-v1:rows=answer,...,tau=0.15``."""
    return f"attn-v1:rows={rows},heads={heads},layers={layers},norm=minmax,upsample=bilinear,tau={tau:g}"


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


def coverage_intensity(grid: np.ndarray, mask: np.ndarray, tau: float = DEFAULT_TAU) -> tuple[float, float]:
    """Coverage and Intensity of one sample (min-max, upsample to the mask's frame, score).

    Raises ``ValueError`` for a non-2-D input, a non-finite grid or an empty mask; callers that
    count these cases check them first (see :class:`AttentionMetrics`).
    """
    arr = np.asarray(grid, dtype=np.float64)
    roi = np.asarray(mask) != 0
    if arr.ndim != 2 or roi.ndim != 2:
        raise ValueError(f"grid and mask must be 2-D, got {arr.shape} and {roi.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("attention grid contains NaN or inf")
    area = int(roi.sum())
    if area == 0:
        raise ValueError("RoI mask is empty")
    scaled, _ = minmax_normalize(arr)
    m = upsample_bilinear(scaled, roi.shape)
    inside = m[roi]
    return float(np.count_nonzero(inside >= tau)) / area, float(inside.sum()) / area


class AttentionMetrics(Metric):
    """``coverage`` and ``intensity`` over rows with ``id``, ``attention_grid`` and ``roi_mask``.

    ``attention_grid`` is a G×G array-like, ``roi_mask`` a boolean H×W array-like in the
    model-input frame. Rows with an ``error``, no grid, no mask, an empty mask or a non-finite
    grid are excluded and counted in ``counts``; constant grids are scored (as zeros) and counted.
    """

    name: ClassVar[str] = "attention"

    def __init__(
        self,
        *,
        tau: float = DEFAULT_TAU,
        rows: str = "answer",
        heads: str = "all",
        layers: str = "all",
        bootstrap: bool = True,
        n_resamples: int = 1000,
        seed: int = 0,
        level: float = 0.95,
    ) -> None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        self.tau = tau
        self.protocol = attention_protocol(rows=rows, heads=heads, layers=layers, tau=tau)
        self.bootstrap = bootstrap
        self.n_resamples = n_resamples
        self.seed = seed
        self.level = level

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
        }
        coverage: dict[str, float] = {}
        intensity: dict[str, float] = {}
        for row in ok:
            grid, mask = row.get("attention_grid"), row.get("roi_mask")
            if grid is None:
                counts["missing_attention"] += 1
                continue
            if mask is None:
                counts["missing_roi"] += 1
                continue
            arr = np.asarray(grid, dtype=np.float64)
            roi = np.asarray(mask) != 0
            if arr.ndim != 2 or roi.ndim != 2:
                raise ValueError(
                    f"row {row['id']!r}: grid and mask must be 2-D, got {arr.shape}, {roi.shape}"
                )
            if not np.all(np.isfinite(arr)):
                counts["nonfinite_attention"] += 1
                continue
            if not roi.any():
                counts["empty_roi"] += 1
                continue
            if minmax_normalize(arr)[1]:
                counts["constant_map"] += 1
            coverage[row["id"]], intensity[row["id"]] = coverage_intensity(arr, roi, self.tau)
        return mean_results({"coverage": coverage, "intensity": intensity}, protocol=self.protocol,
                            counts=counts, bootstrap=self.bootstrap, n_resamples=self.n_resamples,
                            seed=self.seed, level=self.level)
