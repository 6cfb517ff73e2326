"""Phantom generator version 2 (frozen; the default until version 3).

Its questions could be answered without looking at the RoI (one image-level fact answered every
closed abnormality and enlargement question) and its lesions were too small for an 8×8 token grid;
version 3 fixes both. Kept so that v2 result files can still be re-scored and shown
(``PhantomVQA(version="2")``); pixels, questions and answers are unchanged from the v2 release.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from medbench.tasks.phantom import draw
from medbench.tasks.phantom.common import REPORT_PROMPTS, RenderedImage, stream_rng
from medbench.tasks.phantom.draw import MODALITIES, Phantom, dilate
from medbench.tasks.phantom.v2 import anatomy, text
from medbench.tasks.phantom.v2.anatomy import generate_image
from medbench.tasks.phantom.v2.findings import finding_metric
from medbench.tasks.phantom.v2.text import _ENLARGEABLE, make_questions, make_report

__all__ = ["SOURCE_SHA256", "VERSION", "finding_metric", "render", "roi_masks"]

VERSION = "2"
SOURCE_SHA256 = hashlib.sha256(
    b"".join(Path(m.__file__).read_bytes() for m in (draw, anatomy, text))
).hexdigest()


def roi_masks(ph: Phantom) -> dict[str, np.ndarray]:
    """The drawn region masks plus the derived RoIs: dilated lesions, findings and organs."""
    f, masks = ph.findings, dict(ph.masks)
    masks["lesion_roi"] = dilate(masks["lesions"], 3)
    organ_keys = {
        "ct": ["liver", "spleen", "kidney_left", "kidney_right"],
        "mri": ["brain"],
        "x-ray": ["lungs", "heart"],
    }[f.modality]
    masks["organs"] = np.logical_or.reduce([masks[k] for k in organ_keys if f.present.get(k, True)])
    masks["findings"] = masks["lesion_roi"] | (masks[_ENLARGEABLE[f.modality]] if f.enlarged else False)
    return masks


def render(seed: int, split: str, index: int, questions_per_image: int) -> RenderedImage:
    """Image ``index`` of ``split``: the v2 drawing, questions and report, in v2's random-stream order."""
    ph = generate_image(
        MODALITIES[index % len(MODALITIES)],
        stream_rng(VERSION, seed, split, index, "image"),
        stream_rng(VERSION, seed, split, index, "artefacts"),
    )
    f = ph.findings
    qrng = stream_rng(VERSION, seed, split, index, "text")
    questions = make_questions(f, qrng, questions_per_image)
    prompt = text._pick(qrng, REPORT_PROMPTS)
    report = make_report(f, qrng)
    return RenderedImage(
        image=ph.image,
        masks=roi_masks(ph),
        questions=questions,
        report_prompt=prompt,
        report=report,
        report_roi="findings" if (f.abnormal or f.enlarged) else "organs",
        meta={"modality": f.modality, "plane": f.plane, "region": f.region, "abnormal": f.abnormal},
        findings=f.to_json(),
        artefacts=ph.artefacts,
    )
