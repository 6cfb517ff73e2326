"""Phantom version 3: findings and modality drawing.

What changed from version 2, and why (every change serves "the answer lives in the RoI"):

- *Lesion slots.* Each modality has four places a lesion can sit — CT: liver, spleen, left and
  right kidney; MRI: the frontal/occipital (axial) or parietal/temporal (coronal) part of each
  hemisphere; X-ray: the upper and lower zone of each lung. An abnormal image has lesions in one
  slot or, half of the time, in two (the second is a distractor for questions about the first).
- *Two lesions always differ* in kind, size and intensity, so the whole-image histogram shows both
  values and only the named slot tells which one a question asks about.
- *Absolute lesion grey levels and one radius range for every host*, so a lesion's histogram does
  not betray its organ.
- *Paired structures that change independently*: each kidney and each lateral ventricle can be
  enlarged, each kidney or eye can be out of the slice, a pacemaker sits on either side.
- *Lesions large enough for the token grid*: radii 6–8 px (small) and 10–13 px (large) on the
  256-px canvas, about twice version 2's, so a lesion covers a good part of one 32-px cell of an
  8×8 grid; two lesions in one slot are always small, so they fit the smallest host unshrunk.
- *Nothing about a lesion betrays its host* beyond its place: a tumour's core mixes towards a fixed
  grey, and an effusion (only ever in a lower zone) is never one of two lesions.

Drawing primitives, grain and artefacts come from :mod:`medbench.tasks.phantom.draw`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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

SIDES = ("left", "right")
SLOTS: dict[str, tuple[str, ...]] = {
    "ct": ("liver", "spleen", "kidney_left", "kidney_right"),
    "mri-axial": ("frontal_left", "frontal_right", "occipital_left", "occipital_right"),
    "mri-coronal": ("parietal_left", "parietal_right", "temporal_left", "temporal_right"),
    "x-ray": ("lung_upper_left", "lung_upper_right", "lung_lower_left", "lung_lower_right"),
}
KINDS = {"ct": ("cyst", "tumor"), "mri": ("cyst", "tumor"), "x-ray": ("nodule", "opacity", "effusion")}
RADII = {"small": (6.0, 8.0), "large": (10.0, 13.0)}
P_NORMAL, P_TWO_LESIONS = 0.2, 0.5  # P(no lesion); P(a second, distractor slot | abnormal)
P_ABSENT, P_ENLARGED = 0.25, 0.5  # per kidney / eye; per kidney / ventricle / aorta / heart
LESION_GAP_PX = 8  # two slots' lesions stay this far apart: their 3-px RoIs never overlap


@dataclass
class Lesion:
    """The lesions of one slot: one kind, 1 or 2 of them, one size and one intensity."""

    slot: str
    kind: str
    count: int = 1
    size: str | None = None
    intensity: str | None = None


@dataclass
class Findings:
    """The structured truth of one image; every question and report is derived from it."""

    modality: str
    plane: str
    region: str
    lesions: list[Lesion] = field(default_factory=list)
    enlarged: dict[str, bool] = field(default_factory=dict)
    present: dict[str, bool] = field(default_factory=dict)

    @property
    def abnormal(self) -> bool:
        return bool(self.lesions)

    @property
    def slots(self) -> tuple[str, ...]:
        """The slots of this image that exist (an absent kidney holds no lesion)."""
        key = self.modality if self.modality != "mri" else f"mri-{self.plane}"
        return tuple(s for s in SLOTS[key] if self.present.get(s, True))

    def lesion_at(self, slot: str) -> Lesion | None:
        return next((les for les in self.lesions if les.slot == slot), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "modality": self.modality, "plane": self.plane, "region": self.region,
            "lesions": [asdict(les) for les in self.lesions], "enlarged": dict(self.enlarged),
            "present": dict(self.present), "abnormal": self.abnormal,
        }


def _other(value: str, options: tuple[str, ...]) -> str:
    return options[1] if value == options[0] else options[0]


def _lesion(rng: np.random.Generator, modality: str, slot: str, kind: str) -> Lesion:
    les = Lesion(slot, kind)
    if kind in ("cyst", "tumor", "nodule"):
        les.size = _pick(rng, ("small", "large"))
        les.count = 1 + int(rng.integers(2))
        if les.size == "large":  # two large lesions do not fit a kidney: counts would betray the host
            les.count = 1
    if kind in ("cyst", "tumor"):
        les.intensity = _pick(rng, ("bright", "dark"))
    return les


def _kind_for(rng: np.random.Generator, modality: str, slot: str, exclude: str | None = None,
              two: bool = False) -> str:
    """A kind that fits the slot (an effusion only in a lower zone, and only as an image's single
    lesion: naming an upper zone beside a visible effusion would give the other lesion's kind away)."""
    options = [k for k in KINDS[modality]
               if k != exclude and not (k == "effusion" and ("upper" in slot or two))]
    return _pick(rng, options)


def sample_findings(modality: str, rng: np.random.Generator) -> Findings:
    """Draw the truth of one image (see the module docstring for the design)."""
    if modality == "ct":
        f = Findings("ct", "axial", "abdomen")
        f.present = {f"kidney_{s}": bool(rng.random() >= P_ABSENT) for s in SIDES}
        f.enlarged = {"aorta": bool(rng.random() < P_ENLARGED)}
        f.enlarged |= {f"kidney_{s}": f.present[f"kidney_{s}"] and bool(rng.random() < P_ENLARGED) for s in SIDES}
    elif modality == "mri":
        plane = _pick(rng, ("axial", "coronal"))
        f = Findings("mri", plane, "brain")
        if plane == "axial":
            f.present = {f"eye_{s}": bool(rng.random() >= P_ABSENT) for s in SIDES}
        else:
            f.present = {"brainstem": bool(rng.random() < 0.5)}
        f.enlarged = {f"ventricle_{s}": bool(rng.random() < P_ENLARGED) for s in SIDES}
    elif modality == "x-ray":
        f = Findings("x-ray", "coronal", "chest")
        device = bool(rng.random() < 0.5)
        side = _pick(rng, SIDES)
        f.present = {f"pacemaker_{s}": device and s == side for s in SIDES}
        f.enlarged = {"heart": bool(rng.random() < P_ENLARGED)}
    else:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    if rng.random() >= P_NORMAL:
        slots = list(f.slots)
        two = len(slots) > 1 and bool(rng.random() < P_TWO_LESIONS)
        first = slots.pop(int(rng.integers(len(slots))))
        a = _lesion(rng, modality, first, _kind_for(rng, modality, first, two=two))
        f.lesions.append(a)
        if two:
            second = slots[int(rng.integers(len(slots)))]
            b = _lesion(rng, modality, second, _kind_for(rng, modality, second, exclude=a.kind, two=True))
            if a.size is not None and b.size is not None:
                b.size = _other(a.size, ("small", "large"))
            if a.intensity is not None and b.intensity is not None:
                b.intensity = _other(a.intensity, ("bright", "dark"))
            f.lesions.append(b)
    return f


# ---- lesions -------------------------------------------------------------------------------

_LESION_GREY = {"bright": 228, "dark": 62}
TUMOR_CORE_MIX = 128  # a tumour's core is halfway to this fixed grey, never to its host's


def _paint_lesions(rng: np.random.Generator, cv: Canvas, host: Mask, les: Lesion) -> Mask:
    """Cysts and tumours at absolute grey levels (tumours lobulated, with a core and texture)."""
    assert les.size is not None and les.intensity is not None
    value = _LESION_GREY[les.intensity]
    union = np.zeros((SIZE, SIZE), dtype=bool)
    for cy, cx, r in place_lesions(rng, host, les.count, *RADII[les.size]):
        m = lesion_mask(rng, cy, cx, r, les.kind) & host  # a lesion never spills into another slot
        cv.paint(m, value)
        if les.kind == "tumor":
            cv.img[disc(cy, cx, 0.45 * r) & m] = (value + TUMOR_CORE_MIX) // 2
            cv.img[m] += texture(rng, 14, 3)[m]
        union |= m
    return union


def _clear_of(drawn: dict[str, Mask]) -> Mask:
    """Pixels far enough from the lesions drawn so far that their dilated RoIs never touch."""
    taken = np.logical_or.reduce([np.zeros((SIZE, SIZE), dtype=bool), *drawn.values()])
    return ~dilate(taken, LESION_GAP_PX)


def _draw_slot_lesions(rng: np.random.Generator, cv: Canvas, f: Findings, hosts: dict[str, Mask]) -> dict[str, Mask]:
    drawn: dict[str, Mask] = {}
    for les in f.lesions:
        host = hosts[les.slot] & _clear_of(drawn)
        drawn[les.slot] = _paint_lesions(rng, cv, host, les)
    return drawn


# ---- modalities ----------------------------------------------------------------------------


def _draw_ct(rng: np.random.Generator, f: Findings) -> tuple[Canvas, dict[str, Mask], dict[str, Mask]]:
    """Axial abdomen: wall, bowel, liver (image-left), spleen, kidneys (each may be absent or
    enlarged), spine, aorta (may be enlarged); lesions in their slots."""
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
        "spleen": (0.0, 0.6, 0.4, 0.19, (-0.35, -0.1)),
        "kidney_right": (0.4, -0.38, 0.3, 0.19, (-0.3, -0.1)),
        "kidney_left": (0.4, 0.38, 0.3, 0.19, (0.1, 0.3)),
    }
    shapes, footprints = {}, {}
    for name, (oy, ox, fy, fx, tilt) in layout.items():
        oy_, ox_, t = cy + oy * ry + _u(rng, -4, 4), cx + ox * rx + _u(rng, -4, 4), _u(rng, *tilt)
        scale = 1.3 if f.enlarged.get(name) else 1.0
        shapes[name] = ellipse(oy_, ox_, scale * fy * ry, scale * fx * rx, t) & inner
        footprints[name] = dilate(ellipse(oy_, ox_, 1.3 * fy * ry, 1.3 * fx * rx, t) & inner, 2)
    values = {"liver": 145, "spleen": 138, "kidney_right": 160, "kidney_left": 160}
    for name, shape in shapes.items():
        if f.present.get(name, True):
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
    ay, ax = cy + 0.26 * ry, cx + 0.12 * rx
    cv.paint(disc(ay, ax, _u(rng, 10, 12) if f.enlarged["aorta"] else _u(rng, 5, 6.5)), 165, "aorta")
    masks = {"body": body, "spine": cv.region("spine"), "aorta": dilate(cv.region("aorta"), 3),
             "aorta_footprint": dilate(disc(ay, ax, 12), 2)}
    for name, shape in shapes.items():
        masks[name] = cv.region(name) if f.present.get(name, True) else shape
        masks[f"{name}_footprint"] = footprints[name]
    hosts = {name: masks[name] for name in shapes}
    return cv, masks, _draw_slot_lesions(rng, cv, f, hosts)


def _draw_mri(rng: np.random.Generator, f: Findings) -> tuple[Canvas, dict[str, Mask], dict[str, Mask]]:
    """T2-like head: scalp, skull, CSF, grey/white matter, two lateral ventricles (each may be
    enlarged), falx; eyes (axial; each may be out of the slice) or brainstem (coronal)."""
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
    vents: dict[str, Mask] = {}
    footprints: dict[str, Mask] = {}
    if f.plane == "axial":
        brain = ellipse(cy + 2, cx, ry - 13, rx - 13)
        white = ellipse(cy + 2, cx, ry - 24, rx - 22)
        stem = np.zeros((SIZE, SIZE), dtype=bool)
        split = cy + 2.0
        for side, sign in (("right", -1), ("left", 1)):
            big, small = (0.24 * ry, 9.0), (0.2 * ry, 4.5)
            vry, vrx = big if f.enlarged[f"ventricle_{side}"] else small
            vents[side] = ellipse(cy - 4, cx + sign * (3 + vrx), vry, vrx, -sign * 0.12)
            footprints[side] = ellipse(cy - 4, cx + sign * (3 + big[1]), big[0], big[1], -sign * 0.12)
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
        split = cy + 0.08 * ry
        for side, sign in (("right", -1), ("left", 1)):
            vry, vrx = (16.0, 8.0) if f.enlarged[f"ventricle_{side}"] else (12.0, 4.0)
            vents[side] = ellipse(cy - 0.1 * ry, cx + sign * (5 + vrx), vry, vrx, -sign * 0.35)
            footprints[side] = ellipse(cy - 0.1 * ry, cx + sign * 13.0, 16.0, 8.0, -sign * 0.35)
    cv.paint(brain, 135, "brain")
    cv.paint(white & brain, 100)
    cv.img[brain] += texture(rng, 8, 5)[brain]
    all_vents = (vents["left"] | vents["right"]) & brain
    cv.paint(all_vents, 205)
    cv.paint(brain & ((_col - cx) * (_col - cx) < 1.0) & ~all_vents, 185)
    eye_discs = {}
    for side, sign in (("right", -1), ("left", 1)):
        ex = cx + sign * 0.32 * rx
        eye_discs[side] = disc(cy - 0.74 * ry, ex, 0.13 * ry + 3)
        if f.present.get(f"eye_{side}"):
            cv.paint(eye_discs[side], 170, "eyes")
            cv.paint(disc(cy - 0.74 * ry, ex, 0.13 * ry), 215)
            cv.paint(ellipse(cy - 0.74 * ry - 0.1 * ry, ex, 2.5, 5), 60)
    brain = cv.region("brain")
    masks = {"body": body, "brain": brain, "brainstem": stem}
    for side in SIDES:
        masks[f"eye_{side}"] = dilate(eye_discs[side], 2)
        masks[f"ventricle_{side}"] = dilate(vents[side] & brain, 2)
        masks[f"ventricle_{side}_footprint"] = dilate(footprints[side], 3)
    hemis = {"right": brain & (_col < cx), "left": brain & (_col >= cx)}
    front, back = ("frontal", "occipital") if f.plane == "axial" else ("parietal", "temporal")
    for side in SIDES:
        masks[f"hemisphere_{side}"] = hemis[side]
        masks[f"{front}_{side}"] = hemis[side] & (_row < split)
        masks[f"{back}_{side}"] = hemis[side] & (_row >= split)
    keep_out = dilate(all_vents | stem, 2) | ((_col - cx) * (_col - cx) <= 9.0)
    hosts = {slot: masks[slot] & ~keep_out for slot in f.slots}
    return cv, masks, _draw_slot_lesions(rng, cv, f, hosts)


def _draw_xray(rng: np.random.Generator, f: Findings) -> tuple[Canvas, dict[str, Mask], dict[str, Mask]]:
    """PA chest: soft tissue, lungs with vessels, mediastinum, heart (may be enlarged), ribs,
    clavicles, a pacemaker on either side or none; nodules, opacities or an effusion in lung zones."""
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
    hry, hrx = (_u(rng, 34, 38), _u(rng, 48, 54)) if f.enlarged["heart"] else (_u(rng, 28, 33), _u(rng, 34, 40))
    hy0, hx0 = cy + 0.4 * lry, cx + 10 + _u(rng, -3, 3)
    cv.paint(ellipse(hy0, hx0, hry, hrx, 0.15), 180, "heart")
    lungs = cv.region("lung_left") | cv.region("lung_right")
    cv.img[lungs] += texture(rng, 8, 3)[lungs]
    for sign in (-1, 1):
        for _ in range(6):
            dy, ddx = _unit(rng)
            length = _u(rng, 18, 34)
            ddx = abs(ddx) * sign
            vy, vx = ly + _u(rng, -5, 15), cx + sign * (dx - 16)
            tilt = sign * dy / (1 + abs(ddx))
            vessel = ellipse(vy + dy * length / 2, vx + ddx * length / 2, 1.3, length / 2, tilt)
            cv.img[vessel & lungs] += 22
        clav = ellipse(ly - lry + 6, cx + sign * 38, 5, 36, sign * 0.18)
        cv.img[clav & body] += 55
    t = (_col - cx) / (dx + lrx)
    phase = _row - (ly - 0.85 * lry) - 18 * t * t
    ribs = (np.mod(phase, 0.27 * lry) < 3.5) & (phase >= 0) & (_row < ly + 0.75 * lry) & (np.abs(_col - cx) > 10)
    cv.img[ribs & body] += 20
    cv.img[body & ((_col - cx) * (_col - cx) < 64.0)] += 20
    masks = {"heart": cv.region("heart"), "heart_footprint": dilate(ellipse(hy0, hx0, 38, 54, 0.15), 2)}
    for side in SIDES:
        masks[f"lung_{side}"] = cv.region(f"lung_{side}")
    masks["lungs"] = masks["lung_left"] | masks["lung_right"]
    masks["body"] = masks["lungs"] | masks["heart"] | cv.region("mediastinum")
    devices: dict[str, tuple[Mask, Mask, float]] = {}
    for side, sign in (("right", -1), ("left", 1)):
        py, px = ly - 0.5 * lry + _u(rng, -4, 4), cx + sign * (dx + lrx + _u(rng, 3, 8))
        device = np.zeros((SIZE, SIZE), dtype=bool)
        device[int(py) - 5 : int(py) + 6, int(px) - 8 : int(px) + 8] = True
        hy, hx = cy + 0.3 * lry, cx + sign * 22
        slope = (hy - py) / (hx - px)
        lead = (np.abs(_row - py - slope * (_col - px)) < 1.0) & ((_col - hx) * (_col - px) <= 0)
        devices[side] = (device, lead, py)
        masks[f"pacemaker_{side}"] = dilate(device | lead, 3)
    lesions: dict[str, Mask] = {}
    for side in SIDES:
        lung = masks[f"lung_{side}"]
        cum = np.cumsum(lung.sum(axis=1))
        mid = float(np.searchsorted(cum, cum[-1] // 2))  # upper and lower zones have equal areas
        masks[f"lung_upper_{side}"] = lung & (_row < mid)
        masks[f"lung_lower_{side}"] = lung & (_row >= mid)
    keep_out = dilate(masks["pacemaker_left"] | masks["pacemaker_right"], 4)
    for les in f.lesions:
        zone = masks[les.slot] & ~keep_out & _clear_of(lesions)
        side = les.slot.rsplit("_", 1)[1]
        m = np.zeros((SIZE, SIZE), dtype=bool)
        if les.kind == "nodule":
            assert les.size is not None
            for ny, nx, r in place_lesions(rng, zone, les.count, *RADII[les.size]):
                m |= disc(ny, nx, r)
            m &= zone
            cv.img[m] += 110
        elif les.kind == "opacity":
            ((oy, ox, _),) = place_lesions(rng, zone, 1, 10.0, 12.0)
            for _ in range(5):
                ddy, ddx = _unit(rng)
                m |= disc(oy + ddy * 9, ox + ddx * 9, _u(rng, 8, 12))
            m &= zone
            cv.img += box_sum(m * 60, 7) // 49
            cv.img[m] += texture(rng, 12, 3)[m]
        else:
            ys = np.nonzero(zone)[0]
            ybot, ytop = float(ys.max()), float(ys.min())
            level = ybot - _u(rng, 0.35, 0.55) * (ybot - ytop)
            lat = 1 if side == "left" else -1
            m = zone & (_row > level - 10 * lat * (_col - (cx + lat * dx)) / lrx)
            cv.paint(m, 160)
        lesions[les.slot] = m
    for side in SIDES:
        if f.present[f"pacemaker_{side}"]:
            device, lead, py = devices[side]
            cv.paint(lead, 235)
            cv.paint(device, 250)
            cv.paint(device & ((_row - py) * (_row - py) < 2.0), 200)
    return cv, masks, lesions


_DRAW = {"ct": _draw_ct, "mri": _draw_mri, "x-ray": _draw_xray}


def generate_image(
    modality: str, rng: np.random.Generator, artefact_rng: np.random.Generator | None = None
) -> Phantom:
    """Draw one phantom: findings from ``rng``, anatomy and lesions, grain, then artefacts.

    ``masks`` holds every named region (for absent organs: where the organ would be), each
    ``<structure>_footprint`` (where an enlarged structure would reach), ``lesions_<slot>`` per
    lesion slot and ``lesions`` (their union; empty when normal).
    """
    findings = sample_findings(modality, rng)
    cv, masks, by_slot = _DRAW[modality](rng, findings)
    lesions = np.zeros((SIZE, SIZE), dtype=bool)
    for slot, m in by_slot.items():
        masks[f"lesions_{slot}"] = m
        lesions |= m
    return finish(cv, masks, lesions, rng, artefact_rng, findings)
