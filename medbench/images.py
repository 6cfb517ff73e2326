"""Opening an image file as a model sees it: 8-bit RGB (or 8-bit grey where a backbone pads grey).

X-rays and other scans are often stored with more than 8 bits per pixel: 16-bit PNG/TIFF (Pillow
modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``), 32-bit integer (``I``) or 32-bit float (``F``).
Pillow's own conversion to 8 bits clips these at 255 (a 12-bit X-ray comes out near-white) or
truncates floats in [0, 1] to black. medbench instead rescales such an image linearly by its own
range — min → 0, max → 255, rounded — to an 8-bit grey image before any RGB conversion. An image
it cannot rescale (every pixel equal, or a NaN/inf pixel) and a mode it does not know raise
:class:`ImageModeError`, which a run records as that sample's error and ``medbench data check``
counts as a skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Modes with more than 8 bits per pixel, rescaled by the image's own range.
HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
#: 8-bit modes that Pillow converts to RGB as they are.
EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV",
                             "LA", "La", "PA"})
#: What the rescaling does, for messages and reports.
RESCALE_RULE = "16-bit/32-bit/float grey rescaled to 8 bits by the image's own min-max range"


class ImageModeError(ValueError):
    """An image whose pixel mode or values cannot be turned into an 8-bit model input."""


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` in an 8-bit mode: high-depth grey rescaled min → 0, max → 255 (see module doc)."""
    mode = image.mode
    if mode in EIGHT_BIT_MODES:
        return image
    if mode not in HIGH_DEPTH_MODES:
        raise ImageModeError(f"pixel mode {mode!r} is not supported (expected an 8-bit mode or "
                             f"{', '.join(sorted(HIGH_DEPTH_MODES))})")
    pixels = np.asarray(image).astype(np.float64)
    if not np.isfinite(pixels).all():
        raise ImageModeError(f"mode {mode} image has NaN or infinite pixels; cannot rescale it to 8 bits")
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi == lo:
        raise ImageModeError(f"mode {mode} image is constant (every pixel {lo:g}); no range to rescale to 8 bits")
    scaled = np.rint((pixels - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def open_image(path: str | Path, *, keep_grey: bool = False) -> Image.Image:
    """The image at ``path`` as RGB, or as mode ``L`` when ``keep_grey`` and the image is grey.

    No EXIF transpose. High-depth images go through :func:`to_8bit` first.
    """
    with Image.open(path) as im:
        im.load()
        image = to_8bit(im)
        if keep_grey and image.mode == "L":
            return image.copy()
        return image.convert("RGB")


def probe_image(path: str | Path) -> str:
    """Open and decode ``path`` completely and check it converts; return its stored pixel mode."""
    with Image.open(path) as im:
        im.load()
        to_8bit(im)
        return im.mode
