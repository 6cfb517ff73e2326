"""Phantom version 2 (frozen): SLAKE-like questions and radiology-style reports from v2 findings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medbench.tasks.phantom.common import CLOSED, COUNT_WORDS, DENSITY, NOUNS, OPEN, QA, say
from medbench.tasks.phantom.common import yes as _yes
from medbench.tasks.phantom.draw import MODALITIES
from medbench.tasks.phantom.v2.anatomy import Findings
from medbench.types import AnswerType

QUESTIONS_PER_IMAGE = 3
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




Builder = Callable[[Findings, np.random.Generator], "QA | None"]
_ENLARGEABLE = {"ct": "aorta", "mri": "ventricles", "x-ray": "heart"}


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
    return say(rng, _PHRASES, key, **fields)


def _lesion_sentence(f: Findings, rng: np.random.Generator) -> str:
    """The sentence describing the abnormality."""
    assert f.kind is not None
    if f.kind in ("opacity", "effusion"):
        return _say(rng, f.kind, side=f.side, zone=str(f.zone))
    singular, plural = _pick(rng, NOUNS[f.kind])
    words = [COUNT_WORDS[f.count], str(f.size)]
    if f.intensity is not None:
        words.append(_pick(rng, DENSITY[f.modality][f.intensity]))
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


