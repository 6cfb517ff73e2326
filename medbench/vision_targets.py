"""Per-cell targets on a visual-token grid, derived from the masks of a rendered phantom v3 image.

Shared by the linear probe on frozen visual tokens (:mod:`medbench.vision_probe`) and the dense
vision-tower pretraining stage (:mod:`medbench.pretrain_vision`). A phantom image is square and the
backbone resizes it to its square input, so cell ``(r, c)`` of a G×G grid is the block of
``size/G × size/G`` image pixels in row ``r`` and column ``c`` (32×32 px of the 256 px image on
tiny-med-llava's 8×8 grid), row-major like the visual tokens.

* **Lesion occupancy**: lesion pixels (mask ``lesions``) cover at least ``LESION_CELL_FRACTION``
  (10 %) of the cell. The smallest lesions (radius 6 px of 256, ~110 px) cover 11 % of a 32×32 cell
  when wholly inside it, so every lesion marks at least one cell as long as it is not split into
  slivers, while a cell grazed by a lesion's rim is not counted.
* **Image-level lesion presence**: any lesion pixel in the image.
* **Structure**: every pixel takes the most specific (smallest) drawn structure that covers it —
  :data:`STRUCTURES`, skipping structures the findings mark absent and the derived masks (lesions,
  footprints, ``organs``, ``findings``) — then each cell takes its most frequent pixel label.
* **Artefact**: burnt-in text, markers, rulers and borders are drawn outside every region, in
  colour or in saturated white, brighter than any tissue: artefact pixels are the pixels outside all
  masks whose channels differ by more than ``ARTEFACT_SPREAD`` or whose every channel is at least
  ``ARTEFACT_WHITE``; a cell is an artefact cell when they cover at least ``ARTEFACT_CELL_FRACTION``
  (2 %, ~20 px of a 32×32 cell: thin text strokes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LESION_CELL_FRACTION = 0.10
ARTEFACT_CELL_FRACTION = 0.02
ARTEFACT_SPREAD = 24
ARTEFACT_WHITE = 250
PHANTOM_VERSION = "3"

#: Structure classes of the dense head (index 0 background, 1 body outside every named structure).
STRUCTURES: tuple[str, ...] = (
    "background", "body",
    "aorta", "spine", "liver", "spleen", "kidney_left", "kidney_right",
    "brain", "brainstem", "eye_left", "eye_right", "ventricle_left", "ventricle_right",
    "hemisphere_left", "hemisphere_right", "frontal_left", "frontal_right", "occipital_left", "occipital_right",
    "parietal_left", "parietal_right", "temporal_left", "temporal_right",
    "lungs", "lung_left", "lung_right", "lung_upper_left", "lung_upper_right", "lung_lower_left",
    "lung_lower_right", "heart", "pacemaker_left", "pacemaker_right",
)
_DERIVED = frozenset({"organs", "findings"})


def _derived(name: str) -> bool:
    return name in _DERIVED or name.startswith("lesion") or name.endswith("_footprint")


def cell_fractions(mask: np.ndarray, grid: int) -> np.ndarray:
    """Fraction of each of the G×G cells covered by a square boolean mask."""
    h, w = mask.shape
    if h != w or h % grid:
        raise ValueError(f"a {h}x{w} mask does not split into a {grid}x{grid} grid of equal square cells")
    return mask.astype(np.float32).reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3))


def lesion_cells(lesions: np.ndarray, grid: int, threshold: float = LESION_CELL_FRACTION) -> np.ndarray:
    """Cells whose lesion-pixel share is at least ``threshold`` (G×G bool)."""
    return cell_fractions(lesions, grid) >= threshold


def artefact_pixels(image: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Coloured or saturated-white pixels outside every mask (H×W bool)."""
    rgb = image.astype(np.int16)
    outside = ~np.logical_or.reduce(list(masks.values()))
    loud = (rgb.max(axis=2) - rgb.min(axis=2) > ARTEFACT_SPREAD) | (rgb.min(axis=2) >= ARTEFACT_WHITE)
    return outside & loud


def structure_pixels(masks: dict[str, np.ndarray], present: dict[str, bool]) -> np.ndarray:
    """Per-pixel index into :data:`STRUCTURES`: the smallest present structure covering it."""
    labels = np.zeros(masks["body"].shape, dtype=np.int64)
    labels[masks["body"]] = STRUCTURES.index("body")
    named = []
    for name, mask in masks.items():
        if name == "body" or _derived(name) or not present.get(name, True):
            continue
        if name not in STRUCTURES:
            raise ValueError(f"phantom structure {name!r} has no dense-target class; add it to STRUCTURES")
        named.append((int(mask.sum()), name, mask))
    for _, name, mask in sorted(named, key=lambda item: (-item[0], item[1])):
        labels[mask] = STRUCTURES.index(name)
    return labels


def majority_cells(labels: np.ndarray, grid: int) -> np.ndarray:
    """The most frequent label of each cell (ties: the smaller index), G×G."""
    h, w = labels.shape
    cells = labels.reshape(grid, h // grid, grid, w // grid).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    out = np.array([np.bincount(row, minlength=len(STRUCTURES)).argmax() for row in cells], dtype=np.int64)
    return out.reshape(grid, grid)


@dataclass(frozen=True)
class CellTargets:
    """Dense targets of one image on a G×G grid."""

    structure: np.ndarray  # G×G int64, index into STRUCTURES
    lesion: np.ndarray  # G×G bool
    artefact: np.ndarray  # G×G bool
    lesion_image: bool


def cell_targets(rendered: Any, grid: int) -> CellTargets:
    """The targets of a rendered phantom v3 image (``render(...)``'s result) on a G×G grid."""
    masks = rendered.masks
    present = rendered.findings.get("present", {})
    return CellTargets(
        structure=majority_cells(structure_pixels(masks, present), grid),
        lesion=lesion_cells(masks["lesions"], grid),
        artefact=cell_fractions(artefact_pixels(rendered.image, masks), grid) >= ARTEFACT_CELL_FRACTION,
        lesion_image=bool(masks["lesions"].any()),
    )


def generator_source() -> str:
    """The sha256 of the phantom v3 generator's source: images of one index differ across sources."""
    from medbench.tasks.phantom import v3

    return str(v3.SOURCE_SHA256)


def render(seed: int, split: str, index: int) -> Any:
    """Image ``index`` of a phantom v3 split, rendered in memory (indices past the split's size are
    further images of the same split's stream, never those of another split)."""
    from medbench.tasks.phantom import v3

    return v3.render(seed, split, index, 1)
