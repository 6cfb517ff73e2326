"""Deterministic drawing primitives and burnt-in artefacts shared by every phantom generator version.

Conventions:

- 256×256 canvas, grey anatomy replicated to RGB; burnt-in artefacts may be coloured.
- Radiological convention: image-left is the patient's right. Every side word (``left``/``right``)
  in findings, masks, questions and reports is the *patient's* side.
- Only arithmetic (``+ - * /``, comparisons, exact integer window sums) on numpy arrays and random
  numbers from ``Generator.random``/``Generator.integers``: no trigonometry, no font rendering, no
  float reductions whose order could vary. Rotations use the rational parametrisation
  ``cos = (1 - t²)/(1 + t²)``, ``sin = 2t/(1 + t²)``. The same seed therefore gives the same pixels
  on every machine with the same numpy.

Changing anything here changes the pixels of every version: the cache's source hash catches it,
but a version's frozen data (``v2``) would then differ from its published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

SIZE = 256
MODALITIES = ("ct", "mri", "x-ray")
_gy, _gx = (a.astype(np.float64) for a in np.mgrid[0:SIZE, 0:SIZE])  # pixel row / column grids
_row, _col = _gy[:, :1], _gx[:1, :]  # the same as broadcastable (SIZE, 1) and (1, SIZE) vectors

Mask = np.ndarray  # bool (SIZE, SIZE)


@dataclass
class Phantom:
    """One generated image with its findings, named region masks and the artefacts drawn on it."""

    image: np.ndarray
    findings: Any
    masks: dict[str, Mask]
    artefacts: list[str]


# ---- geometry ------------------------------------------------------------------------------


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def _pick(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[int(rng.integers(len(options)))]


def _unit(rng: np.random.Generator) -> tuple[float, float]:
    """A random unit vector (dy, dx) without trigonometry."""
    t = _u(rng, -1.0, 1.0)
    c, s = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)
    return (s, c) if rng.integers(2) else (s, -c)


def _window(cy: float, cx: float, r: float) -> tuple[slice, slice]:
    y0, y1 = max(0, int(cy - r) - 1), min(SIZE, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r) - 1), min(SIZE, int(cx + r) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def ellipse(cy: float, cx: float, ry: float, rx: float, tilt: float = 0.0) -> Mask:
    """Filled ellipse; ``tilt`` is tan(θ/2) of the rotation θ, so cos/sin stay rational."""
    c, s = (1 - tilt * tilt) / (1 + tilt * tilt), 2 * tilt / (1 + tilt * tilt)
    out = np.zeros((SIZE, SIZE), dtype=bool)
    ys, xs = _window(cy, cx, max(ry, rx))
    dy, dx = _gy[ys, xs] - cy, _gx[ys, xs] - cx
    u, v = (dx * c + dy * s) / rx, (dy * c - dx * s) / ry
    out[ys, xs] = u * u + v * v <= 1.0
    return out


def disc(cy: float, cx: float, r: float) -> Mask:
    return ellipse(cy, cx, r, r)


def box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Integer sum over a k×k window (k odd), edge-padded; exact, so independent of summation order."""
    w = np.ones(k)
    a = ndimage.correlate1d(a.astype(np.int32), w, axis=0, mode="nearest", output=np.int32)
    return ndimage.correlate1d(a, w, axis=1, mode="nearest", output=np.int32)


def dilate(mask: Mask, r: int) -> Mask:
    """Square dilation by ``r`` pixels (computed on the mask's bounding box)."""
    out = np.zeros_like(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return out
    ys = slice(max(0, rows[0] - r), min(mask.shape[0], rows[-1] + r + 1))
    xs = slice(max(0, cols[0] - r), min(mask.shape[1], cols[-1] + r + 1))
    crop = np.pad(mask[ys, xs], r)
    out[ys, xs] = (box_sum(crop, 2 * r + 1) > 0)[r : crop.shape[0] - r, r : crop.shape[1] - r]
    return out


def texture(rng: np.random.Generator, amp: int, k: int) -> np.ndarray:
    """Smooth integer noise: uniform noise in [-amp·k, amp·k] box-blurred over k×k."""
    noise = rng.integers(-amp * k, amp * k + 1, size=(SIZE, SIZE), dtype=np.int32)
    return box_sum(noise, k) // (k * k)


class Canvas:
    """An integer grey canvas with a label map; painting a named region takes its pixels over."""

    def __init__(self, background: int):
        self.img = np.full((SIZE, SIZE), background, dtype=np.int32)
        self.label = np.zeros((SIZE, SIZE), dtype=np.int16)
        self.names: list[str] = [""]

    def paint(self, mask: Mask, value: int, name: str | None = None) -> None:
        self.img[mask] = value
        if name is not None:
            if name not in self.names:
                self.names.append(name)
            self.label[mask] = self.names.index(name)

    def region(self, name: str) -> Mask:
        if name not in self.names:
            return np.zeros((SIZE, SIZE), dtype=bool)
        return self.label == self.names.index(name)



# ---- lesions -------------------------------------------------------------------------------


def _inside_fraction(host: Mask, cy: float, cx: float, r: float) -> float:
    ys, xs = _window(cy, cx, r)
    dy, dx = _gy[ys, xs] - cy, _gx[ys, xs] - cx
    d = dy * dy + dx * dx <= r * r
    n = int(d.sum())
    return int((d & host[ys, xs]).sum()) / n if n else 0.0


def place_lesions(
    rng: np.random.Generator, host: Mask, count: int, r_lo: float, r_hi: float
) -> list[tuple[float, float, float]]:
    """Non-overlapping circles (cy, cx, r), each mostly inside ``host``.

    Greedy rejection sampling; when a round fails, it restarts with radii shrunk by 4 % more (at
    most to 72 %, which keeps the small and large size classes apart) and, from the fifth round, with
    70 % instead of 85 % of each circle required inside ``host``.
    """
    ys, xs = np.nonzero(host)
    if len(ys) == 0:
        raise ValueError("empty host region for lesions")
    for round_ in range(8):
        scale = 1.0 - 0.04 * round_
        placed: list[tuple[float, float, float]] = []
        for _ in range(300):
            r = _u(rng, r_lo, r_hi) * scale
            i = int(rng.integers(len(ys)))
            cy, cx = float(ys[i]), float(xs[i])
            if any((cy - py) ** 2 + (cx - px) ** 2 < (r + pr + 3) ** 2 for py, px, pr in placed):
                continue
            if _inside_fraction(host, cy, cx, r) >= (0.85 if round_ < 4 else 0.7):
                placed.append((cy, cx, r))
                if len(placed) == count:
                    return placed
    raise RuntimeError(f"could not place {count} lesions of radius {r_lo}-{r_hi}")


def lesion_mask(rng: np.random.Generator, cy: float, cx: float, r: float, kind: str) -> Mask:
    """A cyst is a smooth near-circle; a tumour is lobulated (a union of overlapping discs)."""
    if kind == "cyst":
        return ellipse(cy, cx, r * _u(rng, 0.9, 1.0), r * _u(rng, 0.9, 1.0), _u(rng, -0.5, 0.5))
    m = disc(cy, cx, 0.75 * r)
    for _ in range(4):
        dy, dx = _unit(rng)
        m |= disc(cy + dy * 0.45 * r, cx + dx * 0.45 * r, r * _u(rng, 0.4, 0.6))
    return m



# ---- artefacts -----------------------------------------------------------------------------

_COLOURS = ((255, 255, 255), (255, 235, 60), (80, 255, 80), (90, 230, 255), (255, 255, 255))


def _text(rng: np.random.Generator) -> Mask:
    """A block of text-like glyphs: random 3×5 bitmaps on a 5×8 cell grid."""
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(4, 11))
    out = np.zeros((rows * 8, cols * 5), dtype=bool)
    for r in range(rows):
        for c in range(cols - int(rng.integers(0, 3))):
            out[r * 8 : r * 8 + 5, c * 5 : c * 5 + 3] = rng.integers(0, 4, size=(5, 3)) > 0
    return out


def _marker(rng: np.random.Generator) -> Mask:
    """A solid square, an L or a cross, 10–16 px."""
    n = int(rng.integers(10, 17))
    out = np.zeros((n, n), dtype=bool)
    shape = int(rng.integers(3))
    if shape == 0:
        out[:] = True
    elif shape == 1:
        out[:, :4] = True
        out[-4:, :] = True
    else:
        out[:, n // 2 - 2 : n // 2 + 2] = True
        out[n // 2 - 2 : n // 2 + 2, :] = True
    return out


def _ruler(rng: np.random.Generator) -> Mask:
    """A vertical scale bar with alternating long and short ticks."""
    n = int(rng.integers(60, 110))
    out = np.zeros((n, 8), dtype=bool)
    out[:, :2] = True
    for y in range(0, n, 8):
        out[y : y + 2, : (8 if (y // 8) % 2 == 0 else 5)] = True
    return out if rng.integers(2) else out[:, ::-1]


_STAMPS = {"marker": _marker, "text": _text, "ruler": _ruler}


def _border(rng: np.random.Generator) -> Mask:
    """Bright frame lines along one or two image edges."""
    m = np.zeros((SIZE, SIZE), dtype=bool)
    w = int(rng.integers(2, 5))
    for edge in rng.permutation(4)[: int(rng.integers(1, 3))]:
        if edge == 0:
            m[:w, :] = True
        elif edge == 1:
            m[-w:, :] = True
        elif edge == 2:
            m[:, :w] = True
        else:
            m[:, -w:] = True
    return m


def _corner_placements(rng: np.random.Generator, stamp: Mask) -> list[Mask]:
    """``stamp`` placed near each of the four corners, in random order."""
    h, w = stamp.shape
    out = []
    for corner in rng.permutation(4):
        my, mx = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        y0 = my if corner < 2 else SIZE - h - my
        x0 = mx if corner % 2 == 0 else SIZE - w - mx
        m = np.zeros((SIZE, SIZE), dtype=bool)
        m[y0 : y0 + h, x0 : x0 + w] = stamp
        out.append(m)
    return out


def draw_artefacts(image: np.ndarray, anatomy: Mask, rng: np.random.Generator) -> list[str]:
    """Burn 1–3 salient, answer-independent artefacts (markers, text, borders, rulers) into ``image``.

    Artefacts come from their own random stream and stay at least 4 px away from ``anatomy`` (every
    named region), so they carry no information about any answer. Returns the kinds drawn.
    """
    drawn: list[str] = []
    kinds = ("marker", "text", "border", "ruler", "text")
    wanted = int(rng.integers(1, 4))
    for i in rng.permutation(len(kinds)):
        if len(drawn) >= wanted:
            break
        kind = kinds[int(i)]
        colour = np.array(_pick(rng, _COLOURS), dtype=np.uint8)
        candidates = [_border(rng)] if kind == "border" else _corner_placements(rng, _STAMPS[kind](rng))
        for m in candidates:
            if not (dilate(m, 4) & anatomy).any():
                image[m] = colour
                drawn.append(kind)
                break
    return drawn




def finish(cv: Canvas, masks: dict[str, Mask], lesions: Mask, rng: np.random.Generator,
           artefact_rng: np.random.Generator | None, findings: Any) -> Phantom:
    """Blur and grain the canvas, replicate it to RGB, then burn in artefacts away from every region."""
    grey = box_sum(cv.img, 3) // 9 + rng.integers(-6, 7, size=(SIZE, SIZE), dtype=np.int32)
    image = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    masks["lesions"] = lesions
    arng = artefact_rng if artefact_rng is not None else np.random.default_rng(rng.integers(1 << 62))
    artefacts = draw_artefacts(image, np.logical_or.reduce(list(masks.values())), arng)
    return Phantom(image, findings, masks, artefacts)
