"""Phantom: the embedded tier's synthetic benchmark (``phantom-vqa`` and ``phantom-report``).

A deterministic, versioned generator of medical-like images (axial CT of the abdomen, axial or
coronal brain MRI, frontal chest X-ray; drawing in :mod:`medbench.tasks.phantom_draw`) with
SLAKE-like questions and radiology-style reports. Every question carries a pixel-level,
question-dependent ground-truth RoI mask, so attention Coverage/Intensity can be measured exactly.

Design goals:

- *Answerable only from the RoI.* The evidence for each answer lives inside its RoI: organ presence
  → that organ (for an absent organ: where it would be); enlargement (CT aorta, MRI ventricles,
  X-ray heart) → that structure; "is the <organ> abnormal?" → that organ; lesion questions (kind,
  side, size, intensity, zone) → the lesions dilated by 3 px; "which organ contains the lesion?"
  and counting → the organ; modality/plane → the body region (the one large RoI, about 25–35 % of
  the image). Most other RoIs cover 0.3–12 % of the image.
- *Salient distractors.* Bright, sometimes coloured burnt-in artefacts (corner markers, text-like
  glyph blocks, borders, rulers) come from an independent random stream and are kept outside every
  anatomical region, so they carry no answer information. Base and LoRA-tuned models tend to attend
  to them; attention alignment (A3TUNE) should move attention back onto the RoI.
- *No text-only shortcut.* Findings are sampled so that every closed question type is about 50/50
  yes/no, the organ or side a question names is distributed the same way whatever the answer, and
  sides, zones, sizes, intensities, kinds and counts are uniform. Question types are drawn before
  the findings are consulted (see :func:`make_questions`).
- *Conventions.* Image-left is the patient's right (radiological convention); answers use the
  patient's side. Answers are short lower-case words; CLOSED questions are the yes/no ones and
  everything else (including two-way choices such as "large or small?") is OPEN, because the
  ``llava_med`` closed rule only credits predictions containing "yes" or "no". Version 2 changed
  only that labelling: images, questions and answers are those of version 1.

Answer vocabulary: modality ``ct mri x-ray``; plane ``axial coronal``; ``yes no``; kinds ``cyst
tumor nodule opacity effusion``; organs ``liver spleen kidney``; ``left right upper lower``;
``small large``; ``bright dark``; ``normal enlarged``; counts ``1 2 3``. Content types (SLAKE's):
``modality plane organ abnormality position quantity size color``.

Data live in ``cache_dir("phantom", "v<GENERATOR_VERSION>-<hash of sizes, seed, questions per
image>")/<split>/``: ``images/*.png`` (RGB 256×256), ``masks/*.png`` (1-bit) and ``manifest.json``
(every sample, the sha256 and size of every file, and a checksum of the manifest itself). A split is
generated on first use into a temporary directory that is renamed into place after the manifest is
written, so a half-built cache is never trusted; a manifest or file that fails verification is
rebuilt, as is one written by different generator source code (a safety net for a forgotten
``GENERATOR_VERSION`` bump). Pixels depend only on the generator version, the seed, the split and
the index (the manifest records a sha256 of the raw pixels; PNG bytes may differ across zlib
versions).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from medbench.atomic import atomic_write_json
from medbench.hashing import sha256_file, sha256_obj
from medbench.paths import cache_dir
from medbench.task import Task
from medbench.tasks import phantom_draw
from medbench.tasks.phantom_draw import MODALITIES, Findings, Phantom, dilate, generate_image
from medbench.types import AnswerType, RoI, Sample

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2"
SPLITS = ("pretrain", "train", "test")
DEFAULT_IMAGES: dict[str, int] = {"pretrain": 2000, "train": 500, "test": 200}
QUESTIONS_PER_IMAGE = 3
STALE_BUILD_S = 6 * 3600
REPORT_PROMPTS = (
    "Describe the findings of this image.",
    "Write a radiology report for this image.",
    "What are the findings in this image?",
    "Describe this medical image.",
)
OPEN, CLOSED = AnswerType.OPEN, AnswerType.CLOSED
# Safety net for a forgotten GENERATOR_VERSION bump: a cache built by other generator code is rebuilt.
SOURCE_SHA256 = hashlib.sha256(
    Path(__file__).read_bytes() + Path(phantom_draw.__file__).read_bytes()
).hexdigest()
NAMES = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney_left": "left kidney",
    "kidney_right": "right kidney",
    "hemisphere_left": "left hemisphere",
    "hemisphere_right": "right hemisphere",
    "lung_left": "left lung",
    "lung_right": "right lung",
    "eyes": "eyes",
    "brain": "brain",
    "brainstem": "brainstem",
    "pacemaker": "pacemaker",
    "aorta": "aorta",
    "ventricles": "ventricles",
    "heart": "heart",
}


def _pick(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[int(rng.integers(len(options)))]


def _rng(seed: int, split: str, index: int, stream: str) -> np.random.Generator:
    """A generator seeded from a stable hash of (version, seed, split, index, stream)."""
    key = f"phantom\x1f{GENERATOR_VERSION}\x1f{seed}\x1f{split}\x1f{index}\x1f{stream}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


# ---- questions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QA:
    """One generated question with its answer and the name of its RoI mask."""

    question: str
    answer: str
    answer_type: AnswerType
    content_type: str
    roi: str
    organ: str | None = None


Builder = Callable[[Findings, np.random.Generator], "QA | None"]
_ENLARGEABLE = {"ct": "aorta", "mri": "ventricles", "x-ray": "heart"}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _q_modality_open(f: Findings, rng: np.random.Generator) -> QA:
    q = _pick(
        rng,
        (
            "What modality is used to take this image?",
            "What kind of scan is this?",
            "Which imaging modality is shown in this image?",
        ),
    )
    return QA(q, f.modality, OPEN, "modality", "body")


def _q_modality_closed(f: Findings, rng: np.random.Generator) -> QA:
    asked = f.modality if rng.random() < 0.5 else _pick(rng, [m for m in MODALITIES if m != f.modality])
    article, bare = {"ct": ("a CT scan", "CT"), "mri": ("an MRI", "MRI"), "x-ray": ("an X-ray", "X-ray")}[
        asked
    ]
    q = _pick(rng, (f"Is this {article}?", f"Was this image taken with {bare}?"))
    return QA(q, _yes(asked == f.modality), CLOSED, "modality", "body")


def _q_plane_open(f: Findings, rng: np.random.Generator) -> QA:
    q = _pick(rng, ("In which plane is this image taken?", "What is the scanning plane of this image?"))
    return QA(q, f.plane, OPEN, "plane", "body")


def _q_plane_closed(f: Findings, rng: np.random.Generator) -> QA:
    asked = f.plane if rng.random() < 0.5 else ("coronal" if f.plane == "axial" else "axial")
    article = "an" if asked == "axial" else "a"
    q = _pick(rng, (f"Is this {article} {asked} image?", f"Is this image in the {asked} plane?"))
    return QA(q, _yes(asked == f.plane), CLOSED, "plane", "body")


def _q_presence(f: Findings, rng: np.random.Generator) -> QA:
    if f.modality == "ct":
        organ = _pick(rng, ("spleen", "kidney_left", "kidney_right"))
        name = NAMES[organ]
        q = _pick(
            rng,
            (
                f"Is there a {name} in this image?",
                f"Can the {name} be seen in this image?",
                f"Does this image contain the {name}?",
            ),
        )
    elif f.modality == "mri" and f.plane == "axial":
        organ = "eyes"
        q = _pick(
            rng,
            (
                "Are the eyes visible in this image?",
                "Does this image show the eyes?",
                "Can the eyeballs be seen in this image?",
            ),
        )
    elif f.modality == "mri":
        organ = "brainstem"
        q = _pick(
            rng,
            (
                "Is the brainstem visible in this image?",
                "Does this image show the brainstem?",
                "Can the brainstem be seen in this image?",
            ),
        )
    else:
        organ = "pacemaker"
        q = _pick(
            rng,
            (
                "Is there a pacemaker in this image?",
                "Can a cardiac pacemaker be seen in this image?",
                "Does this image show a pacemaker?",
            ),
        )
    return QA(q, _yes(f.present[organ]), CLOSED, "organ", organ, NAMES[organ])


def _q_enlargement(f: Findings, rng: np.random.Generator) -> QA:
    organ = _ENLARGEABLE[f.modality]
    options = {
        "ct": [
            ("Is the aorta enlarged?", True),
            ("Is there an aortic aneurysm?", True),
            ("Is the aorta normal in size?", False),
        ],
        "mri": [
            ("Are the ventricles enlarged?", True),
            ("Are the ventricles dilated?", True),
            ("Are the ventricles normal in size?", False),
        ],
        "x-ray": [
            ("Is the heart enlarged?", True),
            ("Is there cardiomegaly?", True),
            ("Is the heart size normal?", False),
        ],
    }[f.modality]
    q, positive = _pick(rng, options)
    return QA(q, _yes(f.enlarged == positive), CLOSED, "size", organ, NAMES[organ])


def _q_enlargement_open(f: Findings, rng: np.random.Generator) -> QA:
    organ = _ENLARGEABLE[f.modality]
    be = "are" if organ == "ventricles" else "is"
    q = _pick(rng, (f"What is the size of the {organ}?", f"How large {be} the {organ}?"))
    return QA(q, "enlarged" if f.enlarged else "normal", OPEN, "size", organ, NAMES[organ])


def _q_abnormal_closed(f: Findings, rng: np.random.Generator) -> QA:
    name = NAMES[f.focus]
    templates = [
        (f"Is the {name} abnormal?", True),
        (f"Does the {name} look normal?", False),
        (f"Is there a lesion in the {name}?", True),
        (f"Is the {name} healthy?", False),
    ]
    if f.modality == "mri":
        name = _pick(rng, (name, f"{f.side} side of the brain"))
        templates = [
            (f"Is there a lesion in the {name}?", True),
            (f"Is the {name} free of lesions?", False),
            (f"Does the {name} contain a lesion?", True),
        ]
    elif f.modality == "x-ray":
        templates[2] = (f"Is there an abnormality in the {name}?", True)
        templates[3] = (f"Is the {name} clear?", False)
    q, positive = _pick(rng, templates)
    return QA(q, _yes(f.abnormal == positive), CLOSED, "abnormality", f.focus, NAMES[f.focus])


def _q_abnormal_what(f: Findings, rng: np.random.Generator) -> QA | None:
    if not f.abnormal or f.kind is None:
        return None
    name = NAMES[f.focus]
    if f.modality == "ct":
        options = (
            f"What is the lesion in the {name}?",
            f"What kind of lesion is seen in the {name}?",
            "What kind of lesion is seen in this image?",
        )
    elif f.modality == "mri":
        options = (
            "What abnormality is seen in the brain?",
            "What is the lesion in the brain?",
            "What kind of lesion is seen in this image?",
        )
    else:
        options = (
            "What abnormality is seen in the lungs?",
            f"What is the finding in the {name}?",
            "What is the abnormality in the lungs?",
        )
    return QA(_pick(rng, options), f.kind, OPEN, "abnormality", "lesion_roi", NAMES[f.focus])


def _q_position(f: Findings, rng: np.random.Generator) -> QA | None:
    if not f.abnormal:
        return None
    if f.modality == "ct" and rng.random() < 0.5:
        q = _pick(rng, ("Which organ contains the lesion?", "In which organ is the lesion located?"))
        return QA(q, f.focus.split("_")[0], OPEN, "organ", f.focus, NAMES[f.focus])
    options = {
        "ct": ("On which side of the body is the lesion?", "Which side of the patient is the lesion on?"),
        "mri": ("On which side of the brain is the lesion?", "In which hemisphere is the lesion?"),
        "x-ray": ("Which lung is abnormal?", "Where is the abnormality, in which lung?"),
    }[f.modality]
    return QA(_pick(rng, options), f.side, OPEN, "position", "lesion_roi", NAMES[f.focus])


def _q_zone(f: Findings, rng: np.random.Generator) -> QA | None:
    if not f.abnormal or f.kind not in ("nodule", "opacity"):
        return None
    q = _pick(
        rng,
        (
            "Is the abnormality in the upper or lower part of the lung?",
            "Is the lesion in the lower or upper lung zone?",
        ),
    )
    return QA(q, str(f.zone), OPEN, "position", "lesion_roi", NAMES[f.focus])


def _q_quantity(f: Findings, rng: np.random.Generator) -> QA | None:
    if (
        not f.abnormal
        or f.focus not in ("liver", "hemisphere_left", "hemisphere_right", "lung_left", "lung_right")
        or f.kind in ("opacity", "effusion")
    ):
        return None
    name, noun = NAMES[f.focus], "nodules" if f.kind == "nodule" else "lesions"
    q = _pick(rng, (f"How many {noun} are in the {name}?", f"How many {noun} can be seen in the {name}?"))
    return QA(q, str(f.count), OPEN, "quantity", f.focus, name)


def _q_size(f: Findings, rng: np.random.Generator) -> QA | None:
    if not f.abnormal or f.size is None:
        return None
    noun = "nodule" if f.kind == "nodule" else "lesion"
    q = _pick(rng, (f"Is the {noun} large or small?", f"Is the {noun} small or large?"))
    return QA(q, f.size, OPEN, "size", "lesion_roi", NAMES[f.focus])


def _q_intensity(f: Findings, rng: np.random.Generator) -> QA | None:
    if not f.abnormal or f.intensity is None:
        return None
    q = _pick(rng, ("Is the lesion bright or dark?", "Does the lesion appear dark or bright?"))
    return QA(q, f.intensity, OPEN, "color", "lesion_roi", NAMES[f.focus])


QUESTION_TYPES: dict[str, tuple[Builder, float, AnswerType]] = {
    "modality_open": (_q_modality_open, 0.6, OPEN),
    "modality_closed": (_q_modality_closed, 0.6, CLOSED),
    "plane_open": (_q_plane_open, 0.4, OPEN),
    "plane_closed": (_q_plane_closed, 0.4, CLOSED),
    "presence": (_q_presence, 1.0, CLOSED),
    "enlargement": (_q_enlargement, 0.6, CLOSED),
    "enlargement_open": (_q_enlargement_open, 1.0, OPEN),
    "abnormal_closed": (_q_abnormal_closed, 1.5, CLOSED),
    "abnormal_what": (_q_abnormal_what, 1.4, OPEN),
    "position": (_q_position, 1.4, OPEN),
    "quantity": (_q_quantity, 1.2, OPEN),
    "size": (_q_size, 1.0, CLOSED),
    "intensity": (_q_intensity, 0.8, CLOSED),
    "zone": (_q_zone, 0.5, CLOSED),
}
_FAMILY = {
    "modality_open": "modality",
    "modality_closed": "modality",
    "plane_open": "plane",
    "plane_closed": "plane",
    "enlargement": "enlargement",
    "enlargement_open": "enlargement",
}
_FALLBACK = {  # answer type -> (preferred, then) types that apply to every image
    OPEN: (("enlargement_open",), ("modality_open", "plane_open")),
    CLOSED: (("presence", "enlargement"), ("modality_closed", "plane_closed")),
}


def make_questions(
    f: Findings, rng: np.random.Generator, k: int = QUESTIONS_PER_IMAGE
) -> list[tuple[str, QA]]:
    """``k`` distinct (type, QA) pairs for one image.

    Types are drawn by weight without replacement *before* looking at the image's findings (at most
    one of each family, e.g. modality open/closed), so whether a type is asked never depends on its
    answer. A type that does not apply (e.g. a lesion question on a normal image) is replaced by a
    type of the same answer type that applies to every image and whose answer is independent of the
    findings that decided applicability: organ enlargement or presence if not yet asked, else
    modality or plane.
    """
    names = list(QUESTION_TYPES)
    drawn: list[str] = []
    while names and len(drawn) < k:
        weights = [QUESTION_TYPES[n][1] for n in names]
        r = float(rng.random()) * sum(weights)
        i = 0
        while i < len(weights) - 1 and r >= weights[i]:
            r -= weights[i]
            i += 1
        name = names[i]
        drawn.append(name)
        names = [n for n in names if _FAMILY.get(n, n) != _FAMILY.get(name, name)]
    out: list[tuple[str, QA]] = []
    families = {_FAMILY.get(n, n) for n in drawn}
    for name in drawn:
        qa = QUESTION_TYPES[name][0](f, rng)
        if qa is None:
            preferred, rest = _FALLBACK[QUESTION_TYPES[name][2]]
            pool = [n for n in preferred if _FAMILY.get(n, n) not in families]
            pool = pool or [n for n in rest if _FAMILY.get(n, n) not in families]
            if not pool:
                continue
            name = _pick(rng, pool)
            families.add(_FAMILY.get(name, name))
            qa = QUESTION_TYPES[name][0](f, rng)
        if qa is not None:
            out.append((name, qa))
    return out


# ---- reports -------------------------------------------------------------------------------

_COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
_DENSITY = {
    "ct": {"bright": ("hyperdense", "bright"), "dark": ("hypodense", "dark")},
    "mri": {"bright": ("hyperintense", "bright"), "dark": ("hypointense", "dark")},
}
_NOUNS = {
    "cyst": (("cyst", "cysts"), ("cystic lesion", "cystic lesions")),
    "tumor": (("tumor", "tumors"), ("mass", "masses")),
    "nodule": (("nodule", "nodules"),),
}
_PHRASES: dict[str, tuple[str, ...]] = {
    "header_ct": (
        "Axial CT of the abdomen.", "Axial CT image of the upper abdomen.",
        "CT of the abdomen, axial slice.", "Abdominal CT, axial view.",
    ),
    "header_mri": (
        "{plane} MRI of the brain.", "{plane} T2-weighted MR image of the head.",
        "Brain MRI, {plane} plane.", "MRI of the head, {plane} view.",
    ),
    "header_x-ray": (
        "Frontal chest X-ray.", "PA chest radiograph.", "Chest X-ray, frontal view.",
        "Frontal radiograph of the chest.",
    ),
    "lesion": (
        "{phrase} {verb} seen in {where}.", "There {verb} {phrase} in {where}.", "{where} contains {phrase}.",
    ),
    "opacity": (
        "There is an opacity in the {zone} zone of the {side} lung.",
        "Patchy opacity is seen in the {side} {zone} lung.",
        "An area of opacity is present in the {zone} part of the {side} lung.",
    ),
    "effusion": (
        "There is a {side} pleural effusion.", "A {side} pleural effusion is present.",
        "Fluid is seen at the base of the {side} lung, consistent with pleural effusion.",
    ),
    "enlarged_ct": (
        "The abdominal aorta is dilated, consistent with an aneurysm.", "The aorta is enlarged.",
        "There is an aneurysm of the abdominal aorta.",
    ),
    "enlarged_mri": ("The ventricles are enlarged.", "The lateral ventricles are dilated."),
    "enlarged_x-ray": (
        "The heart is enlarged.", "Cardiomegaly is present.", "The cardiac silhouette is enlarged.",
    ),
    "pacemaker": ("A cardiac pacemaker is seen.", "A pacemaker is present in the left chest."),
    "liver": ("The liver is unremarkable.", "The liver appears normal.", "Normal appearance of the liver."),
    "spleen": ("The spleen is unremarkable.", "The spleen appears normal.", "The spleen is normal in size."),
    "spleen_absent": ("The spleen is not seen at this level.", "The spleen is not included in this slice."),
    "kidneys": ("Both kidneys are unremarkable.", "The kidneys appear normal."),
    "kidneys_absent": ("The kidneys are not seen at this level.", "No kidney is included in this slice."),
    "kidney": ("The {side} kidney is unremarkable.", "The {side} kidney appears normal."),
    "kidney_absent": ("The {side} kidney is not seen at this level.",),
    "spine": ("The vertebral body is intact.", "No bone abnormality is seen.", "The spine is unremarkable."),
    "aorta": ("The aorta is normal in caliber.", "The abdominal aorta is normal."),
    "hemisphere": ("The {side} hemisphere is unremarkable.", "The {side} hemisphere appears normal."),
    "ventricles": ("The ventricles are normal in size.", "The ventricles appear normal."),
    "midline": ("No midline shift.", "The midline is preserved."),
    "eyes": ("Both eyes are seen.", "The orbits are included."),
    "brainstem": ("The brainstem is included.", "The brainstem appears normal."),
    "skull": ("The skull is intact.",),
    "lung": ("The {side} lung is clear.", "The {side} lung appears normal."),
    "lungs": ("The lungs are clear.", "Both lungs are clear.", "No focal lung lesion."),
    "heart": ("The heart size is normal.", "The cardiac silhouette is normal.", "Normal heart size."),
    "no_effusion": ("No pleural effusion.", "There is no pleural effusion."),
    "pneumothorax": ("No pneumothorax.",),
    "bones": ("The bones are intact.",),
    "mediastinum": ("The mediastinum is normal.",),
    "impression": ("No focal lesion is seen.", "No acute abnormality."),
    "impression_normal": ("No focal lesion is seen.", "No abnormality is seen.", "No acute abnormality."),
}  # fmt: skip


def _say(rng: np.random.Generator, key: str, **fields: str) -> str:
    """One phrasing of ``key``, filled in and capitalised."""
    text = _pick(rng, _PHRASES[key]).format(**fields)
    return text[0].upper() + text[1:]


def _lesion_sentence(f: Findings, rng: np.random.Generator) -> str:
    """The sentence describing the abnormality."""
    assert f.kind is not None
    if f.kind in ("opacity", "effusion"):
        return _say(rng, f.kind, side=f.side, zone=str(f.zone))
    singular, plural = _pick(rng, _NOUNS[f.kind])
    words = [_COUNT_WORDS[f.count], str(f.size)]
    if f.intensity is not None:
        words.append(_pick(rng, _DENSITY[f.modality][f.intensity]))
    words.append(singular if f.count == 1 else plural)
    side, zone = f.side, f.zone
    where = {
        "ct": (f"the {NAMES[f.focus]}",),
        "mri": (f"the {side} hemisphere", f"the {side} cerebral hemisphere", f"the {side} side of the brain"),
        "x-ray": (f"the {zone} zone of the {side} lung", f"the {side} {zone} lung"),
    }[f.modality]
    verb = "is" if f.count == 1 else "are"
    return _say(rng, "lesion", phrase=" ".join(words), verb=verb, where=_pick(rng, where))


def _normal_sentences(f: Findings, rng: np.random.Generator) -> list[str]:
    """Statements about the normal or absent structures, in random order."""
    keys: list[tuple[str, dict[str, str]]] = []
    other = "left" if f.side == "right" else "right"
    if f.modality == "ct":
        host = f.focus if f.abnormal else None
        if host != "liver":
            keys.append(("liver", {}))
        if host != "spleen":
            keys.append(("spleen" if f.present["spleen"] else "spleen_absent", {}))
        sides = [s for s in ("right", "left") if host != f"kidney_{s}"]
        shown = [s for s in sides if f.present[f"kidney_{s}"]]
        if len(sides) == 2 and len(shown) in (0, 2):
            keys.append(("kidneys" if shown else "kidneys_absent", {}))
        else:
            keys.extend(("kidney" if s in shown else "kidney_absent", {"side": s}) for s in sides)
        keys.append(("spine", {}))
        if not f.enlarged:
            keys.append(("aorta", {}))
    elif f.modality == "mri":
        if f.abnormal:
            keys.append(("hemisphere", {"side": other}))
        if not f.enlarged:
            keys.append(("ventricles", {}))
        keys.append(("midline", {}))
        keys.extend((k, {}) for k in ("eyes", "brainstem") if f.present.get(k))
        if rng.random() < 0.5:
            keys.append(("skull", {}))
    else:
        keys.append(("lung", {"side": other}) if f.abnormal else ("lungs", {}))
        if not f.enlarged:
            keys.append(("heart", {}))
        if f.kind != "effusion":
            keys.append(("no_effusion", {}))
        keys.extend((k, {}) for k in ("pneumothorax", "bones", "mediastinum") if rng.random() < 0.5)
    return [_say(rng, keys[int(i)][0], **keys[int(i)][1]) for i in rng.permutation(len(keys))]


def make_report(f: Findings, rng: np.random.Generator) -> str:
    """A radiology-style report: header, findings (lesions, enlargement, device), normal statements
    in random order and, for images without lesions, often an impression."""
    parts = [_say(rng, f"header_{f.modality}", plane=f.plane)]
    if f.abnormal:
        parts.append(_lesion_sentence(f, rng))
    if f.enlarged:
        parts.append(_say(rng, f"enlarged_{f.modality}"))
    if f.present.get("pacemaker"):
        parts.append(_say(rng, "pacemaker"))
    parts.extend(_normal_sentences(f, rng))
    if not f.abnormal and rng.random() < 0.6:
        parts.append(_say(rng, "impression" if f.enlarged else "impression_normal"))
    return " ".join(parts)


# ---- cache ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that determines the generated data; its hash names the cache directory."""

    n_images: tuple[tuple[str, int], ...]
    seed: int = 0
    questions_per_image: int = QUESTIONS_PER_IMAGE

    def to_json(self, split: str) -> dict[str, Any]:
        return {
            "generator_version": GENERATOR_VERSION,
            "n_images": dict(self.n_images),
            "seed": self.seed,
            "questions_per_image": self.questions_per_image,
            "split": split,
            "source_sha256": SOURCE_SHA256,
        }

    def root(self) -> Path:
        key = sha256_obj(
            {
                "n_images": dict(self.n_images),
                "seed": self.seed,
                "questions_per_image": self.questions_per_image,
            }
        )[:12]
        return cache_dir("phantom", f"v{GENERATOR_VERSION}-{key}")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _SplitWriter:
    """Writes files into a split directory under construction and records their hashes."""

    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, dict[str, Any]] = {}
        (out / "images").mkdir(parents=True)
        (out / "masks").mkdir()

    def write(self, rel: str, data: bytes) -> None:
        (self.out / rel).write_bytes(data)
        self.files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def roi(self, image_id: str, key: str, mask: np.ndarray) -> dict[str, Any]:
        """Write the mask once per (image, key); return the manifest's RoI entry."""
        rel = f"masks/{image_id}-{key}.png"
        if rel not in self.files:
            if not mask.any():
                raise RuntimeError(f"empty RoI {key!r} for {image_id}")
            self.write(rel, _png(mask))
        return {"mask": rel, "label": key, "fraction": round(int(mask.sum()) / mask.size, 4)}


def _roi_masks(ph: Phantom) -> dict[str, np.ndarray]:
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


def _build_split(out: Path, split: str, config: PhantomConfig) -> None:
    """Generate every image, mask, question and report of ``split`` into ``out``; manifest last."""
    writer = _SplitWriter(out)
    n = dict(config.n_images)[split]
    width = max(5, len(str(n - 1)))
    images, vqa, reports = [], [], []
    for index in range(n):
        image_id = f"{split}-{index:0{width}d}"
        ph = generate_image(
            MODALITIES[index % len(MODALITIES)],
            _rng(config.seed, split, index, "image"),
            _rng(config.seed, split, index, "artefacts"),
        )
        f, masks = ph.findings, _roi_masks(ph)
        qrng = _rng(config.seed, split, index, "text")
        questions = make_questions(f, qrng, config.questions_per_image)
        image_rel = f"images/{image_id}.png"
        writer.write(image_rel, _png(ph.image))
        base_meta = {
            "modality": f.modality,
            "plane": f.plane,
            "region": f.region,
            "image_id": image_id,
            "abnormal": f.abnormal,
        }
        for j, (qtype, qa) in enumerate(questions):
            meta = {**base_meta, "content_type": qa.content_type, "question_type": qtype}
            if qa.organ is not None:
                meta["organ"] = qa.organ
            vqa.append(
                {
                    "id": f"{image_id}-q{j}",
                    "image": image_rel,
                    "question": qa.question,
                    "answer": qa.answer,
                    "answer_type": qa.answer_type.value,
                    "roi": writer.roi(image_id, qa.roi, masks[qa.roi]),
                    "meta": meta,
                }
            )
        report_roi = "findings" if (f.abnormal or f.enlarged) else "organs"
        reports.append(
            {
                "id": f"{image_id}-report",
                "image": image_rel,
                "question": _pick(qrng, REPORT_PROMPTS),
                "answer": make_report(f, qrng),
                "answer_type": AnswerType.REPORT.value,
                "roi": writer.roi(image_id, report_roi, masks[report_roi]),
                "meta": {**base_meta, "content_type": "report", "question_type": "report"},
            }
        )
        images.append(
            {
                "id": image_id,
                "file": image_rel,
                "pixels_sha256": hashlib.sha256(ph.image.tobytes()).hexdigest(),
                "findings": f.to_json(),
                "artefacts": ph.artefacts,
            }
        )
    manifest: dict[str, Any] = {
        "format": 1,
        "config": config.to_json(split),
        "images": images,
        "vqa": vqa,
        "report": reports,
        "files": writer.files,
    }
    manifest["checksum"] = sha256_obj(manifest)
    atomic_write_json(out / "manifest.json", manifest)


_VERIFIED: dict[str, tuple[str, tuple]] = {}


def _read_manifest(split_dir: Path, config: PhantomConfig, split: str, verify: str) -> dict[str, Any] | None:
    """The manifest if it and every file it lists check out, else None.

    The manifest's own checksum and every file's size are always checked. With ``verify="full"``
    every file's sha256 is checked too, once per process: the result is remembered with each file's
    size, inode and mtime, and only once the newest file is a few seconds old, so a same-size
    rewrite within the filesystem's timestamp granularity is still caught.
    """
    try:
        data = json.loads((split_dir / "manifest.json").read_text(encoding="utf-8"))
        body = {k: v for k, v in data.items() if k != "checksum"}
        if data.get("checksum") != sha256_obj(body) or data.get("config") != config.to_json(split):
            return None
        stats = []
        for rel, info in sorted(data["files"].items()):
            st = os.stat(split_dir / rel)
            if st.st_size != info["size"]:
                return None
            stats.append((rel, st.st_size, st.st_ino, st.st_mtime_ns))
        if verify == "full":
            signature = (data["checksum"], tuple(stats))
            if _VERIFIED.get(str(split_dir)) != signature:
                for rel, info in data["files"].items():
                    if sha256_file(split_dir / rel) != info["sha256"]:
                        return None
                if time.time() - max((s[3] for s in stats), default=0) / 1e9 > 3.0:
                    _VERIFIED[str(split_dir)] = signature
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return data


def _install(tmp: Path, final: Path, is_valid: Callable[[], bool]) -> None:
    """Rename the built ``tmp`` to ``final``, replacing an invalid ``final``; tolerate racing builders."""
    for _ in range(10):
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if is_valid():
                return
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex}")
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
    raise RuntimeError(f"could not install the phantom cache at {final}")


def ensure_split(config: PhantomConfig, split: str, verify: str = "full") -> tuple[Path, dict[str, Any]]:
    """The verified split directory and manifest, generating (or regenerating) them if needed."""
    root = config.root()
    split_dir = root / split
    data = _read_manifest(split_dir, config, split, verify)
    if data is not None:
        return split_dir, data
    if split_dir.exists():
        log.warning("phantom cache %s failed verification; rebuilding it", split_dir)
    for stale in [*root.glob(f".build-{split}-*"), *root.glob(f".trash-{split}-*")]:
        try:
            age = time.time() - stale.stat().st_mtime
        except OSError:
            continue
        if age > STALE_BUILD_S:  # left behind by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
    log.info("generating phantom split %r (%d images) in %s", split, dict(config.n_images)[split], split_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{split}-", dir=root))
    try:
        _build_split(tmp, split, config)
        _install(tmp, split_dir, lambda: _read_manifest(split_dir, config, split, verify) is not None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = _read_manifest(split_dir, config, split, verify)
    if data is None:
        raise RuntimeError(f"the phantom cache at {split_dir} failed verification right after it was built")
    return split_dir, data


# ---- tasks ---------------------------------------------------------------------------------


class _PhantomTask(Task):
    """Shared loader: both tasks read the same generated images, masks and manifest."""

    embedded = True
    version = GENERATOR_VERSION
    splits = SPLITS
    eval_split = "test"
    train_split = "train"
    expected_layout = (
        "nothing to download: generated on first use under $MEDBENCH_CACHE (default ~/.cache/medbench)"
        "/phantom/v<version>-<hash>/<split>/{manifest.json,images/,masks/}"
    )
    section: ClassVar[str]

    def __init__(
        self,
        data_root: str | os.PathLike | None = None,
        n_images: Mapping[str, int] | None = None,
        seed: int = 0,
        questions_per_image: int = QUESTIONS_PER_IMAGE,
        verify: str = "full",
    ):
        """``n_images`` overrides the images per split (defaults: ``DEFAULT_IMAGES``); ``data_root``
        is accepted for interface compatibility and unused (data go to ``cache_dir``); ``verify`` is
        ``"full"`` (sha256 of every file once per process) or ``"size"``."""
        super().__init__(data_root)
        sizes = dict(DEFAULT_IMAGES)
        for split, n in (n_images or {}).items():
            if split not in SPLITS or int(n) < 1:
                raise ValueError(f"n_images: expected positive counts for {SPLITS}, got {split!r}={n!r}")
            sizes[split] = int(n)
        if questions_per_image < 1 or verify not in ("full", "size"):
            raise ValueError("questions_per_image must be >= 1 and verify 'full' or 'size'")
        self.config = PhantomConfig(tuple(sorted(sizes.items())), int(seed), int(questions_per_image))
        self.verify = verify

    @classmethod
    def default_data_root(cls) -> Path | None:
        return None

    @property
    def root(self) -> Path:
        return self.config.root()

    def load(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits {self.splits}, not {split!r}")
        split_dir, manifest = ensure_split(self.config, split, self.verify)
        samples = [
            Sample(
                id=e["id"],
                image_path=str(split_dir / e["image"]),
                question=e["question"],
                answer=e["answer"],
                answer_type=AnswerType(e["answer_type"]),
                split=split,
                roi=RoI(mask_path=str(split_dir / e["roi"]["mask"]), label=e["roi"]["label"]),
                meta={**e["meta"], "roi_fraction": e["roi"]["fraction"]},
            )
            for e in manifest[self.section]
        ]
        return sorted(samples, key=lambda s: s.id)


class PhantomVQA(_PhantomTask):
    """Synthetic SLAKE-like VQA with a question-dependent pixel RoI for every question."""

    name = "phantom-vqa"
    kind = "vqa"
    metric_protocol = "llava_med"
    section = "vqa"


class PhantomReport(_PhantomTask):
    """Synthetic report generation, one report per image.

    The RoI is the union of the abnormal regions (lesions dilated by 3 px, plus the enlarged aorta,
    ventricles or heart) when there are any, else the organs a normal report describes (CT: liver
    and the spleen and kidneys that are present; MRI: brain; X-ray: lungs and heart).
    """

    name = "phantom-report"
    kind = "report"
    metric_protocol = "coco"
    section = "report"
