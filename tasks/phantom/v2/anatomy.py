"""Phantom generator version 2 (frozen): findings and modality drawing.

Kept so result files made on version 2 can still be re-scored and shown; new work uses version 3.
Drawing primitives and artefacts come from :mod:`medbench.tasks.phantom.draw`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medbench.tasks.phantom.draw import (
    MODALITIES,
    SIZE,
    Canvas,
    Mask,
    Phantom,
    _col,
    _pick,
    _row,
    _u,
    _unit,
    box_sum,
    dilate,
    disc,
    ellipse,
    finish,
    lesion_mask,
    place_lesions,
    texture,
)


@dataclass
class Findings:
    """The structured truth of one image; every question and report is derived from it."""

    modality: str
    plane: str
    region: str
    focus: str
    side: str
    abnormal: bool
    enlarged: bool = False
    present: dict[str, bool] = field(default_factory=dict)
    kind: str | None = None
    count: int = 0
    size: str | None = None
    intensity: str | None = None
    zone: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)




# ---- findings ------------------------------------------------------------------------------


def sample_findings(modality: str, rng: np.random.Generator) -> Findings:
    """Draw the truth of one image so that every question type is answer-balanced.

    A *focus* organ (the host of the abnormality, or the organ that abnormality questions ask
    about in normal images) is drawn with the same distribution whether or not the image is
    abnormal; organ presence probabilities are chosen so each organ is present half the time.
    Independently, one structure that abnormality questions never ask about is enlarged half the
    time (CT: aorta, MRI: ventricles, X-ray: heart).
    """
    abnormal = bool(rng.random() < 0.5)
    enlarged = bool(rng.random() < 0.5)
    if modality == "ct":
        focus = _pick(rng, ("liver", "spleen", "kidney_left", "kidney_right", "liver", "spleen"))
        present = {
            "spleen": focus == "spleen" or bool(rng.random() < 0.25),
            "kidney_left": focus == "kidney_left" or bool(rng.random() < 0.4),
            "kidney_right": focus == "kidney_right" or bool(rng.random() < 0.4),
        }
        side = {"liver": "right", "spleen": "left"}.get(focus, focus.rsplit("_", 1)[-1])
        f = Findings("ct", "axial", "abdomen", focus, side, abnormal, enlarged, present)
        if abnormal:
            f.kind = _pick(rng, ("cyst", "tumor"))
            f.count = int(rng.integers(1, 4)) if focus == "liver" else 1
    elif modality == "mri":
        plane = _pick(rng, ("axial", "coronal"))
        side = _pick(rng, ("left", "right"))
        present = {"eyes" if plane == "axial" else "brainstem": bool(rng.random() < 0.5)}
        f = Findings("mri", plane, "brain", f"hemisphere_{side}", side, abnormal, enlarged, present)
        if abnormal:
            f.kind = _pick(rng, ("cyst", "tumor"))
            f.count = int(rng.integers(1, 4))
    elif modality == "x-ray":
        side = _pick(rng, ("left", "right"))
        present = {"pacemaker": bool(rng.random() < 0.5)}
        f = Findings("x-ray", "coronal", "chest", f"lung_{side}", side, abnormal, enlarged, present)
        if abnormal:
            f.kind = _pick(rng, ("nodule", "opacity", "effusion"))
            f.count = int(rng.integers(1, 4)) if f.kind == "nodule" else 1
            f.zone = "lower" if f.kind == "effusion" else _pick(rng, ("upper", "lower"))
    else:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    if abnormal and f.kind in ("cyst", "tumor", "nodule"):
        f.size = _pick(rng, ("small", "large"))
    if abnormal and f.kind in ("cyst", "tumor"):
        f.intensity = _pick(rng, ("bright", "dark"))
    return f


def _draw_lesions(
    rng: np.random.Generator,
    cv: Canvas,
    host: Mask,
    f: Findings,
    radii: dict[str, tuple[float, float]],
    levels: tuple[int, int, int],
) -> Mask:
    """Paint cysts/tumours into ``host``; ``levels`` = (host, bright, dark) grey values."""
    assert f.kind is not None and f.size is not None
    host_value, bright, dark = levels
    value = bright if f.intensity == "bright" else dark
    union = np.zeros((SIZE, SIZE), dtype=bool)
    for cy, cx, r in place_lesions(rng, host, f.count, *radii[f.size]):
        m = lesion_mask(rng, cy, cx, r, f.kind)
        cv.paint(m, value)
        if f.kind == "tumor":
            core = disc(cy, cx, 0.45 * r) & m
            cv.img[core] = (value + host_value) // 2
            cv.img[m] += texture(rng, 14, 3)[m]
        union |= m
    return union


# ---- modalities ----------------------------------------------------------------------------


def _draw_ct(rng: np.random.Generator, f: Findings) -> tuple[Canvas, dict[str, Mask], Mask]:
    """Axial abdomen: fat and muscle wall, bowel loops, liver (image-left), spleen, kidneys, spine,
    aorta; lesions in the focus organ."""
    cy, cx = 128 + _u(rng, -5, 5), 128 + _u(rng, -5, 5)
    ry, rx = _u(rng, 64, 72), _u(rng, 88, 98)
    cv = Canvas(8)
    body = ellipse(cy, cx, ry, rx)
    cv.paint(body, 70)
    cv.paint(ellipse(cy, cx, ry - 5, rx - 5), 125)
    inner = ellipse(cy, cx, ry - 9, rx - 9)
    cv.paint(inner, 100)
    cv.img[inner] += texture(rng, 10, 5)[inner]
    for _ in range(int(rng.integers(10, 16))):
        by, bx = cy + _u(rng, -0.6, 0.15) * ry, cx + _u(rng, -0.3, 0.5) * rx
        cv.paint(disc(by, bx, _u(rng, 4, 8)) & inner, _pick(rng, (40, 112, 88)))
    layout = {  # centre offsets and radii as fractions of the body radii, tilt range
        "liver": (-0.18, -0.44, 0.58, 0.42, (-0.25, 0.1)),
        "spleen": (0.02, 0.62, 0.38, 0.17, (-0.35, -0.1)),
        "kidney_right": (0.42, -0.38, 0.28, 0.16, (-0.3, -0.1)),
        "kidney_left": (0.42, 0.38, 0.28, 0.16, (0.1, 0.3)),
    }
    shapes = {
        name: ellipse(
            cy + oy * ry + _u(rng, -4, 4), cx + ox * rx + _u(rng, -4, 4), fy * ry, fx * rx, _u(rng, *tilt)
        )
        for name, (oy, ox, fy, fx, tilt) in layout.items()
    }
    shapes = {k: v & inner for k, v in shapes.items()}
    values = {"liver": 145, "spleen": 138, "kidney_right": 160, "kidney_left": 160}
    for name, shape in shapes.items():
        if name == "liver" or f.present[name]:
            cv.paint(shape, values[name], name)
            if name.startswith("kidney"):
                ys, xs = np.nonzero(shape)
                sign = 1 if name == "kidney_left" else -1
                hy, hx = int(ys.sum()) / len(ys), int(xs.sum()) / len(xs) - sign * 0.07 * rx
                cv.paint(ellipse(hy, hx, 0.08 * ry, 0.045 * rx) & shape, 118)
    vy, vr = cy + 0.6 * ry, 0.15 * ry
    cv.paint(disc(vy, cx, vr), 235, "spine")
    cv.paint(disc(vy, cx, vr - 3), 190, "spine")
    cv.paint(disc(vy + vr + 4, cx, 4.5) & inner, 55, "spine")
    cv.paint(
        disc(cy + 0.26 * ry, cx + 0.12 * rx, _u(rng, 10, 12) if f.enlarged else _u(rng, 5, 6.5)), 165, "aorta"
    )
    masks = {"body": body, "spine": cv.region("spine"), "aorta": dilate(cv.region("aorta"), 3)}
    for name, shape in shapes.items():
        masks[name] = cv.region(name) if (name == "liver" or f.present[name]) else shape
    lesions = np.zeros((SIZE, SIZE), dtype=bool)
    if f.abnormal:
        big = {"small": (4.0, 6.0), "large": (11.0, 14.0)}
        small_organ = {"small": (3.0, 4.0), "large": (7.0, 8.5)}
        radii = big if f.focus == "liver" else small_organ
        v = values[f.focus]
        lesions = _draw_lesions(rng, cv, masks[f.focus], f, radii, (v, v + 75, v - 70))
    return cv, masks, lesions


def _draw_mri(rng: np.random.Generator, f: Findings) -> tuple[Canvas, dict[str, Mask], Mask]:
    """T2-like head: scalp, dark skull, bright CSF, grey/white matter, ventricles, falx; eyes (axial)
    or brainstem and cord (coronal); lesions in the focus hemisphere."""
    cv = Canvas(5)
    if f.plane == "axial":
        cy, cx = 128 + _u(rng, -5, 5), 128 + _u(rng, -5, 5)
        ry, rx = _u(rng, 82, 90), _u(rng, 64, 72)
        body = ellipse(cy, cx, ry, rx)
    else:
        cy, cx = 108 + _u(rng, -4, 4), 128 + _u(rng, -5, 5)
        ry, rx = _u(rng, 72, 78), _u(rng, 78, 86)
        neck = ellipse(cy + ry + 30, cx, 60, 0.42 * rx)
        cv.paint(neck, 140)
        body = ellipse(cy, cx, ry, rx) | neck
    cv.paint(ellipse(cy, cx, ry, rx), 150)
    cv.paint(ellipse(cy, cx, ry - 4, rx - 4), 30)
    cv.paint(ellipse(cy, cx, ry - 10, rx - 10), 190)
    if f.plane == "axial":
        brain = ellipse(cy + 2, cx, ry - 13, rx - 13)
        white = ellipse(cy + 2, cx, ry - 24, rx - 22)
        vy, vry, vrx = (cy - 4, 0.24 * ry, 9.0) if f.enlarged else (cy - 4, 0.2 * ry, 4.5)
        vents = ellipse(vy, cx - 3 - vrx, vry, vrx, 0.12) | ellipse(vy, cx + 3 + vrx, vry, vrx, -0.12)
        stem = np.zeros((SIZE, SIZE), dtype=bool)
    else:
        top = ellipse(cy - 0.12 * ry, cx, 0.72 * ry, rx - 13)
        temporal = ellipse(cy + 0.25 * ry, cx - 0.45 * rx, 0.3 * ry, 0.38 * rx)
        temporal |= ellipse(cy + 0.25 * ry, cx + 0.45 * rx, 0.3 * ry, 0.38 * rx)
        stem = ellipse(cy + 0.6 * ry, cx, 0.35 * ry, 0.13 * rx) & ellipse(cy, cx, ry - 12, rx - 12)
        brain = (top | temporal) & ellipse(cy, cx, ry - 12, rx - 12)
        if f.present["brainstem"]:
            cv.paint(ellipse(cy + 1.05 * ry, cx, 0.5 * ry, 0.1 * rx), 115)
            brain |= stem
        white = ellipse(cy - 0.12 * ry, cx, 0.72 * ry - 10, rx - 24)
        vry, vrx = (16.0, 8.0) if f.enlarged else (12.0, 4.0)
        vents = ellipse(cy - 0.1 * ry, cx - 5 - vrx, vry, vrx, 0.35) | ellipse(
            cy - 0.1 * ry, cx + 5 + vrx, vry, vrx, -0.35
        )
    cv.paint(brain, 135, "brain")
    cv.paint(white & brain, 100)
    cv.img[brain] += texture(rng, 8, 5)[brain]
    cv.paint(vents & brain, 205)
    falx = brain & ((_col - cx) * (_col - cx) < 1.0) & ~vents
    cv.paint(falx, 185)
    eyes = disc(cy - 0.74 * ry, cx - 0.32 * rx, 0.13 * ry + 3) | disc(
        cy - 0.74 * ry, cx + 0.32 * rx, 0.13 * ry + 3
    )
    if f.present.get("eyes"):
        cv.paint(eyes, 170, "eyes")
        for sign in (-1, 1):
            ex = cx + sign * 0.32 * rx
            cv.paint(disc(cy - 0.74 * ry, ex, 0.13 * ry), 215)
            cv.paint(ellipse(cy - 0.74 * ry - 0.1 * ry, ex, 2.5, 5), 60)
    brain = cv.region("brain")
    masks = {
        "body": body,
        "brain": brain,
        "hemisphere_right": brain & (_col < cx),
        "hemisphere_left": brain & (_col >= cx),
        "eyes": cv.region("eyes") if f.present.get("eyes") else eyes,
        "brainstem": stem,
        "ventricles": dilate(vents & brain, 2),
    }
    lesions = np.zeros((SIZE, SIZE), dtype=bool)
    if f.abnormal:
        host = masks[f.focus] & ~dilate(vents | stem, 2) & ((_col - cx) * (_col - cx) > 9.0)
        radii = {"small": (4.0, 6.0), "large": (10.0, 13.0)}
        lesions = _draw_lesions(rng, cv, host, f, radii, (110, 225, 40))
    return cv, masks, lesions


def _draw_xray(rng: np.random.Generator, f: Findings) -> tuple[Canvas, dict[str, Mask], Mask]:
    """PA chest: soft tissue, lungs with vessels, mediastinum, heart, ribs, clavicles, optional
    pacemaker; nodules, opacity or effusion in the focus lung."""
    cy, cx = 128 + _u(rng, -5, 5), 128 + _u(rng, -4, 4)
    cv = Canvas(12)
    body = ellipse(cy + 18, cx, 100, _u(rng, 96, 104)) | ellipse(cy - 90, cx, 30, 22)
    cv.paint(body, 118)
    cv.img[body] += texture(rng, 6, 7)[body]
    ly, lry, lrx, dx = cy - 8, _u(rng, 60, 68), _u(rng, 30, 35), _u(rng, 40, 45)
    for side, sign in (("right", -1), ("left", 1)):
        lx = cx + sign * dx
        t = (_col - lx) / lrx
        lung = ellipse(ly, lx, lry, lrx, -sign * 0.06) & (_row < ly + 0.62 * lry + 14 * t * t)
        cv.paint(lung, 50, f"lung_{side}")
    cv.paint(body & ((_col - cx) * (_col - cx) < 196.0) & (_row < cy + 40), 165, "mediastinum")
    hry, hrx = (_u(rng, 34, 38), _u(rng, 48, 54)) if f.enlarged else (_u(rng, 28, 33), _u(rng, 34, 40))
    cv.paint(ellipse(cy + 0.4 * lry, cx + 10 + _u(rng, -3, 3), hry, hrx, 0.15), 180, "heart")
    lungs = cv.region("lung_left") | cv.region("lung_right")
    cv.img[lungs] += texture(rng, 8, 3)[lungs]
    for sign in (-1, 1):
        for _ in range(6):
            dy, ddx = _unit(rng)
            length = _u(rng, 18, 34)
            ddx = abs(ddx) * sign
            hy, hx = ly + _u(rng, -5, 15), cx + sign * (dx - 16)
            tilt = sign * dy / (1 + abs(ddx))
            vessel = ellipse(hy + dy * length / 2, hx + ddx * length / 2, 1.3, length / 2, tilt)
            cv.img[vessel & lungs] += 22
        clav = ellipse(ly - lry + 6, cx + sign * 38, 5, 36, sign * 0.18)
        cv.img[clav & body] += 55
    t = (_col - cx) / (dx + lrx)
    phase = _row - (ly - 0.85 * lry) - 18 * t * t
    period = 0.27 * lry
    ribs = (np.mod(phase, period) < 3.5) & (phase >= 0) & (_row < ly + 0.75 * lry) & (np.abs(_col - cx) > 10)
    cv.img[ribs & body] += 20
    cv.img[body & ((_col - cx) * (_col - cx) < 64.0)] += 20
    masks = {
        "lung_left": cv.region("lung_left"),
        "lung_right": cv.region("lung_right"),
        "heart": cv.region("heart"),
    }
    py, px = ly - 0.5 * lry + _u(rng, -4, 4), cx + dx + lrx + _u(rng, 3, 8)
    device = np.zeros((SIZE, SIZE), dtype=bool)
    device[int(py) - 5 : int(py) + 6, int(px) - 8 : int(px) + 8] = True
    hy, hx = cy + 0.3 * lry, cx + 22
    t = (hy - py) / (hx - px)
    lead = (np.abs(_row - py - t * (_col - px)) < 1.0) & (_col >= hx) & (_col <= px)
    masks["pacemaker"] = dilate(device | lead, 3)
    masks["lungs"] = masks["lung_left"] | masks["lung_right"]
    masks["body"] = masks["lungs"] | masks["heart"] | cv.region("mediastinum")
    lesions = np.zeros((SIZE, SIZE), dtype=bool)
    if f.abnormal:
        lung = masks[f.focus]
        ys = np.nonzero(lung)[0]
        cum = np.cumsum(lung.sum(axis=1))
        mid = float(np.searchsorted(cum, cum[-1] // 2))  # upper and lower zones have equal areas
        zone = lung & ~dilate(masks["pacemaker"], 4) & ((_row < mid) if f.zone == "upper" else (_row >= mid))
        if f.kind == "nodule":
            radii = (4.0, 6.0) if f.size == "small" else (9.0, 12.0)
            for ny, nx, r in place_lesions(rng, zone, f.count, *radii):
                m = disc(ny, nx, r)
                cv.img[m] += 110
                lesions |= m
        elif f.kind == "opacity":
            ((oy, ox, _),) = place_lesions(rng, zone, 1, 10.0, 12.0)
            for _ in range(5):
                dy, ddx = _unit(rng)
                lesions |= disc(oy + dy * 9, ox + ddx * 9, _u(rng, 8, 12))
            lesions &= lung
            cv.img += box_sum(lesions * 60, 7) // 49
            cv.img[lesions] += texture(rng, 12, 3)[lesions]
        else:
            ybot = float(ys.max())
            level = ybot - _u(rng, 0.3, 0.45) * (ybot - float(ys.min())) / 2
            lat = 1 if f.side == "left" else -1
            lesions = lung & (_row > level - 10 * lat * (_col - (cx + lat * dx)) / lrx)
            cv.paint(lesions, 160)
    if f.present["pacemaker"]:
        cv.paint(lead, 235)
        cv.paint(device, 250)
        cv.paint(device & ((_row - py) * (_row - py) < 2.0), 200)
    return cv, masks, lesions


_DRAW = {"ct": _draw_ct, "mri": _draw_mri, "x-ray": _draw_xray}


# ---- entry point ---------------------------------------------------------------------------


def generate_image(
    modality: str, rng: np.random.Generator, artefact_rng: np.random.Generator | None = None
) -> Phantom:
    """Draw one phantom: findings from ``rng``, anatomy and lesions, grain, then artefacts.

    ``masks`` holds every named region (for absent organs: where the organ would be) plus
    ``lesions`` (the abnormal regions, undilated; empty when normal). Small structures (aorta,
    ventricles, pacemaker) are stored dilated by 2–3 px so they can serve as RoIs directly.
    """
    findings = sample_findings(modality, rng)
    cv, masks, lesions = _DRAW[modality](rng, findings)
    return finish(cv, masks, lesions, rng, artefact_rng, findings)
