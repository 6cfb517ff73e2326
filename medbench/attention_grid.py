"""The attention grid of a prediction row: encoded by the decode loop, decoded by scoring and show.

A row's ``attention`` is ``{"grid_size": G, "grid": G×G floats row-major (6 significant digits),
"image_size": [w, h]}`` — the answer's mean attention over the visual-token grid, and the size of
the image it was computed on (the frame the RoI is mapped into).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class AttentionGridError(ValueError):
    """A stored attention grid that is not G×G finite values."""


def encode(grid: np.ndarray, image_size: Sequence[int]) -> dict[str, Any]:
    """The ``attention`` record of a G×G map computed on an image of ``image_size`` (w, h)."""
    return {"grid_size": int(grid.shape[0]), "grid": [float(f"{v:.6g}") for v in grid.reshape(-1)],
            "image_size": list(image_size)}


def decode(attn: Mapping[str, Any], *, check: bool = False) -> np.ndarray:
    """The G×G float64 map of an ``attention`` record (row-major, as :func:`encode` wrote it).

    ``check``: refuse a grid that is not G×G finite values with :class:`AttentionGridError`.
    """
    g = int(attn["grid_size"])
    grid = np.asarray(attn["grid"], dtype=np.float64)
    if check and (grid.size != g * g or not np.all(np.isfinite(grid))):
        raise AttentionGridError(f"attention grid is not {g}x{g} finite values")
    return grid.reshape(g, g)
