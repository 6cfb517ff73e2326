"""Phantom generator version 3 (current): the answer lives in the RoI.

See :mod:`.anatomy` for the findings and drawing, :mod:`.text` for the questions and reports and
:mod:`.findings` for the report finding labels; this module turns one image index into a
:class:`~medbench.tasks.phantom.common.RenderedImage` with every RoI mask its questions name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from medbench.tasks.phantom import draw
from medbench.tasks.phantom.common import REPORT_PROMPTS, RenderedImage, stream_rng
from medbench.tasks.phantom.draw import MODALITIES, Phantom, _pick, dilate
from medbench.tasks.phantom.v3 import anatomy, text
from medbench.tasks.phantom.v3.anatomy import generate_image
from medbench.tasks.phantom.v3.findings import finding_metric
from medbench.tasks.phantom.v3.text import lesion_roi, make_questions, make_report

__all__ = ["SOURCE_SHA256", "VERSION", "finding_metric", "render", "roi_masks"]

VERSION = "3"
SOURCE_SHA256 = hashlib.sha256(
    b"".join(Path(p).read_bytes() for p in (draw.__file__, anatomy.__file__, text.__file__, __file__))
).hexdigest()
LESION_MARGIN_PX = 3
_ORGANS = {"ct": ("liver", "spleen", "kidney_left", "kidney_right"), "mri": ("brain",), "x-ray": ("lungs", "heart")}


def roi_masks(ph: Phantom) -> dict[str, np.ndarray]:
    """The drawn region masks plus the derived RoIs: dilated lesions (all, and per slot), the
    abnormal findings and the organs a normal report describes."""
    f, masks = ph.findings, dict(ph.masks)
    masks["lesion_roi"] = dilate(masks["lesions"], LESION_MARGIN_PX)
    for les in f.lesions:
        masks[lesion_roi(les.slot)] = dilate(masks[f"lesions_{les.slot}"], LESION_MARGIN_PX)
    masks["organs"] = np.logical_or.reduce([masks[k] for k in _ORGANS[f.modality] if f.present.get(k, True)])
    findings = masks["lesion_roi"].copy()
    for key, flag in f.enlarged.items():
        if flag:
            findings |= masks[key]
    masks["findings"] = findings
    return masks


def render(seed: int, split: str, index: int, questions_per_image: int) -> RenderedImage:
    """Image ``index`` of ``split``: drawing, questions and report from their own random streams."""
    ph = generate_image(
        MODALITIES[index % len(MODALITIES)],
        stream_rng(VERSION, seed, split, index, "image"),
        stream_rng(VERSION, seed, split, index, "artefacts"),
    )
    f = ph.findings
    qrng = stream_rng(VERSION, seed, split, index, "text")
    masks = roi_masks(ph)
    return RenderedImage(
        image=ph.image,
        masks=masks,
        questions=make_questions(f, qrng, questions_per_image),
        report_prompt=_pick(qrng, REPORT_PROMPTS),
        report=make_report(f, qrng),
        report_roi="findings" if masks["findings"].any() else "organs",
        meta={"modality": f.modality, "plane": f.plane, "region": f.region, "abnormal": f.abnormal,
              "lesion_slots": [les.slot for les in f.lesions]},
        findings=f.to_json(),
        artefacts=ph.artefacts,
    )
