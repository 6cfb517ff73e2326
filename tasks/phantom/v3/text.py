"""Phantom version 3: questions and reports from v3 findings.

Questions are built so that a model that does not look where the question points cannot beat the
majority answer (the gates of ``medbench data probe``):

- *Closed questions choose their answer first.* "Is there a lesion in the <slot>?" flips a fair
  coin for yes/no and then names a slot with (yes) or without (no) a lesion, so an image's overall
  appearance (how many lesions, which kinds) says nothing about the answer; presence ("Is the left
  kidney in this slice?"), enlargement ("Is the right lateral ventricle enlarged?") and lesion
  attribute questions ("Is the lesion in the spleen bright?", one of two lesions of opposite
  intensity) pick the named side or lesion at random, and are asked only on images where both
  answers are possible (one kidney missing, one ventricle enlarged, two lesions).
- *Open questions name a place or ask for one*: what kind of lesion, how bright, how large, how
  many lesions in a named slot of a two-lesion image (the two lesions always differ, so the
  image-level histogram shows both values); where the lesion of a one-lesion image is; which side is
  enlarged, missing or holds the pacemaker. Modality and plane are the only image-level questions and
  are rare.
- No closed modality/plane questions: the whole image answers them.

Types are drawn by weight before the findings are consulted; a type that does not apply to an image
is replaced by an applicable type of the same answer type (none: the image gets fewer questions).
Conventions are version 2's: patient's sides, short lower-case answers, CLOSED = yes/no.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medbench.tasks.phantom.common import CLOSED, COUNT_WORDS, DENSITY, NOUNS, OPEN, QA, say, yes
from medbench.tasks.phantom.draw import _pick
from medbench.tasks.phantom.v3.anatomy import Findings, Lesion
from medbench.types import AnswerType

NAMES = {
    "liver": "liver", "spleen": "spleen", "kidney_left": "left kidney", "kidney_right": "right kidney",
    "frontal_left": "left frontal lobe", "frontal_right": "right frontal lobe",
    "occipital_left": "left occipital lobe", "occipital_right": "right occipital lobe",
    "parietal_left": "left parietal lobe", "parietal_right": "right parietal lobe",
    "temporal_left": "left temporal lobe", "temporal_right": "right temporal lobe",
    "lung_upper_left": "left upper lung zone", "lung_upper_right": "right upper lung zone",
    "lung_lower_left": "left lower lung zone", "lung_lower_right": "right lower lung zone",
    "ventricle_left": "left lateral ventricle", "ventricle_right": "right lateral ventricle",
    "eye_left": "left eye", "eye_right": "right eye",
    "pacemaker_left": "left chest", "pacemaker_right": "right chest",
    "aorta": "aorta", "heart": "heart", "brainstem": "brainstem",
}  # fmt: skip
Builder = Callable[[Findings, np.random.Generator], "QA | None"]


def lesion_roi(slot: str) -> str:
    """The RoI key of the lesions of one slot (dilated by 3 px)."""
    return f"lesion_roi_{slot}"


def _two_lesions(f: Findings) -> tuple[Lesion, Lesion] | None:
    return (f.lesions[0], f.lesions[1]) if len(f.lesions) == 2 else None


def _one_of_pair(flags: dict[str, bool], keys: tuple[str, str]) -> str | None:
    """The key whose flag differs from the other's (None when both agree)."""
    a, b = (bool(flags.get(k)) for k in keys)
    return None if a == b else (keys[0] if a else keys[1])


# ---- closed --------------------------------------------------------------------------------


def _q_abnormal(f: Findings, rng: np.random.Generator) -> QA | None:
    with_lesion = [s for s in f.slots if f.lesion_at(s)]
    without = [s for s in f.slots if not f.lesion_at(s)]
    if not with_lesion or not without:
        return None
    truth = bool(rng.random() < 0.5)
    slot = _pick(rng, with_lesion if truth else without)
    name = NAMES[slot]
    template, positive = _pick(rng, (
        (f"Is there a lesion in the {name}?", True),
        (f"Is the {name} abnormal?", True),
        (f"Does the {name} contain a lesion?", True),
        (f"Does the {name} look normal?", False),
        (f"Is the {name} free of lesions?", False),
    ))  # fmt: skip
    return QA(template, yes(truth == positive), CLOSED, "abnormality", slot, name)


def _presence_pair(f: Findings) -> tuple[str, str] | None:
    """The pair of side-specific structures of which exactly one is in the image, if any."""
    stem = {"ct": "kidney", "mri": "eye", "x-ray": "pacemaker"}[f.modality]
    keys = (f"{stem}_left", f"{stem}_right")
    if not all(k in f.present for k in keys):
        return None
    return keys if _one_of_pair(f.present, keys) else None


def _q_presence(f: Findings, rng: np.random.Generator) -> QA | None:
    keys = _presence_pair(f)
    if keys is None:
        return None
    key = _pick(rng, keys)
    name = NAMES[key]
    if f.modality == "x-ray":
        q = _pick(rng, (f"Is there a pacemaker in the {name}?", f"Is a cardiac device seen in the {name}?"))
    elif f.modality == "ct":
        q = _pick(rng, (f"Is the {name} in this slice?", f"Can the {name} be seen in this image?"))
    else:
        q = _pick(rng, (f"Is the {name} visible in this image?", f"Does this slice show the {name}?"))
    return QA(q, yes(f.present[key]), CLOSED, "organ", key, name)


def _enlarged_pair(f: Findings) -> tuple[str, str] | None:
    stem = {"ct": "kidney", "mri": "ventricle"}.get(f.modality)
    if stem is None:
        return None
    keys = (f"{stem}_left", f"{stem}_right")
    if not all(f.present.get(k, True) for k in keys):
        return None
    return keys if _one_of_pair(f.enlarged, keys) else None


def _q_enlargement(f: Findings, rng: np.random.Generator) -> QA | None:
    keys = _enlarged_pair(f)
    if keys is None:
        return None
    key = _pick(rng, keys)
    name = NAMES[key]
    q = _pick(rng, (f"Is the {name} enlarged?", f"Is the {name} dilated?", f"Is there enlargement of the {name}?"))
    return QA(q, yes(f.enlarged[key]), CLOSED, "size", f"{key}_footprint", name)


def _q_attribute_closed(f: Findings, rng: np.random.Generator) -> QA | None:
    pair = _two_lesions(f)
    if pair is None or pair[0].intensity is None or pair[1].intensity is None:
        return None
    les = _pick(rng, pair)
    name = NAMES[les.slot]
    if rng.random() < 0.5:
        q = _pick(rng, (f"Is the lesion in the {name} bright?", f"Does the lesion in the {name} appear bright?"))
        return QA(q, yes(les.intensity == "bright"), CLOSED, "color", lesion_roi(les.slot), name)
    q = _pick(rng, (f"Is the lesion in the {name} large?", f"Is the {name} lesion large?"))
    return QA(q, yes(les.size == "large"), CLOSED, "size", lesion_roi(les.slot), name)


# ---- open ----------------------------------------------------------------------------------


def _q_modality(f: Findings, rng: np.random.Generator) -> QA:
    q = _pick(rng, ("What modality is used to take this image?", "What kind of scan is this?",
                    "Which imaging modality is shown in this image?"))
    return QA(q, f.modality, OPEN, "modality", "body")


def _q_plane(f: Findings, rng: np.random.Generator) -> QA:
    q = _pick(rng, ("In which plane is this image taken?", "What is the scanning plane of this image?"))
    return QA(q, f.plane, OPEN, "plane", "body")


def _q_where(f: Findings, rng: np.random.Generator) -> QA | None:
    if len(f.lesions) != 1:
        return None
    slot = f.lesions[0].slot
    if f.modality == "ct":
        q = _pick(rng, ("Which organ contains the lesion?", "In which organ is the lesion located?"))
        return QA(q, NAMES[slot], OPEN, "organ", "lesion_roi", NAMES[slot])
    side = slot.rsplit("_", 1)[1]
    if rng.random() < 0.5 or f.lesions[0].kind == "effusion":  # an effusion is always in a lower zone
        q = {"mri": ("In which hemisphere is the lesion?", "On which side of the brain is the lesion?"),
             "x-ray": ("Which lung is abnormal?", "On which side is the abnormality?")}[f.modality]
        return QA(_pick(rng, q), side, OPEN, "position", "lesion_roi", NAMES[slot])
    part = slot.split("_")[1] if f.modality == "x-ray" else slot.split("_")[0]
    q = {"mri-axial": "Is the lesion in the frontal or the occipital lobe?",
         "mri-coronal": "Is the lesion in the parietal or the temporal lobe?",
         "x-ray": "Is the abnormality in the upper or the lower lung zone?"}[
        f.modality if f.modality == "x-ray" else f"mri-{f.plane}"]
    return QA(q, part, OPEN, "position", "lesion_roi", NAMES[slot])


def _q_which_side(f: Findings, rng: np.random.Generator) -> QA | None:
    options: list[QA] = []
    pair = _enlarged_pair(f)
    if pair is not None:
        key = pair[0] if f.enlarged[pair[0]] else pair[1]
        noun = "kidney" if f.modality == "ct" else "lateral ventricle"
        options.append(QA(f"Which {noun} is enlarged?", key.rsplit("_", 1)[1], OPEN, "size",
                          f"{key}_footprint", NAMES[key]))
    pair = _presence_pair(f)
    if pair is not None:
        shown = pair[0] if f.present[pair[0]] else pair[1]
        hidden = pair[1] if shown == pair[0] else pair[0]
        q, key = {"ct": ("Which kidney is not in this slice?", hidden),
                  "mri": ("Which eye is not in this slice?", hidden),
                  "x-ray": ("On which side is the pacemaker?", shown)}[f.modality]
        options.append(QA(q, key.rsplit("_", 1)[1], OPEN, "position", key, NAMES[key]))
    return _pick(rng, options) if options else None


def _attribute_lesion(f: Findings, rng: np.random.Generator, attribute: str) -> Lesion | None:
    """One of the two lesions, when both have ``attribute`` and their values differ."""
    pair = _two_lesions(f)
    if pair is None:
        return None
    a, b = (getattr(les, attribute) for les in pair)
    if a is None or b is None or a == b:
        return None
    return _pick(rng, pair)


def _q_kind(f: Findings, rng: np.random.Generator) -> QA | None:
    les = _attribute_lesion(f, rng, "kind")
    if les is None:
        return None
    name = NAMES[les.slot]
    q = _pick(rng, (f"What kind of lesion is in the {name}?", f"What is the abnormality in the {name}?"))
    return QA(q, les.kind, OPEN, "abnormality", lesion_roi(les.slot), name)


def _q_intensity(f: Findings, rng: np.random.Generator) -> QA | None:
    les = _attribute_lesion(f, rng, "intensity")
    if les is None:
        return None
    name = NAMES[les.slot]
    q = _pick(rng, (f"Is the lesion in the {name} bright or dark?", f"Does the {name} lesion appear dark or bright?"))
    return QA(q, str(les.intensity), OPEN, "color", lesion_roi(les.slot), name)


def _q_size(f: Findings, rng: np.random.Generator) -> QA | None:
    les = _attribute_lesion(f, rng, "size")
    if les is None:
        return None
    name = NAMES[les.slot]
    q = _pick(rng, (f"Is the lesion in the {name} large or small?", f"Is the {name} lesion small or large?"))
    return QA(q, str(les.size), OPEN, "size", lesion_roi(les.slot), name)


def _q_count(f: Findings, rng: np.random.Generator) -> QA | None:
    les = _attribute_lesion(f, rng, "count") if all(x.size for x in f.lesions) else None
    if les is None:
        return None
    name = NAMES[les.slot]
    q = _pick(rng, (f"How many lesions are in the {name}?", f"How many lesions can be seen in the {name}?"))
    return QA(q, str(les.count), OPEN, "quantity", lesion_roi(les.slot), name)


QUESTION_TYPES: dict[str, tuple[Builder, float, AnswerType]] = {
    "abnormal_closed": (_q_abnormal, 3.0, CLOSED),
    "presence": (_q_presence, 1.2, CLOSED),
    "enlargement": (_q_enlargement, 1.2, CLOSED),
    "attribute_closed": (_q_attribute_closed, 0.8, CLOSED),
    "modality_open": (_q_modality, 0.1, OPEN),
    "plane_open": (_q_plane, 0.08, OPEN),
    "where": (_q_where, 1.6, OPEN),
    "which_side": (_q_which_side, 1.0, OPEN),
    "kind": (_q_kind, 1.0, OPEN),
    "intensity": (_q_intensity, 0.6, OPEN),
    "size": (_q_size, 0.6, OPEN),
    "count": (_q_count, 0.6, OPEN),
}


def _draw_type(rng: np.random.Generator, names: list[str]) -> str:
    weights = [QUESTION_TYPES[n][1] for n in names]
    r = float(rng.random()) * sum(weights)
    i = 0
    while i < len(weights) - 1 and r >= weights[i]:
        r -= weights[i]
        i += 1
    return names[i]


IMAGE_LEVEL = ("modality_open", "plane_open")


def make_questions(f: Findings, rng: np.random.Generator, k: int = 3) -> list[tuple[str, QA]]:
    """Up to ``k`` distinct (type, QA) pairs for one image.

    Types are drawn by weight before the findings are read. A type that does not apply is replaced
    by an applicable type drawn by weight from, in order: the unused place-specific types of the
    same answer type, then those of the other answer type; image-level questions (modality, plane)
    are never a replacement, so they stay rare, and an image with nothing left to ask about gets
    fewer than ``k`` questions.
    """
    names = list(QUESTION_TYPES)
    drawn: list[str] = []
    while names and len(drawn) < k:
        name = _draw_type(rng, names)
        drawn.append(name)
        names.remove(name)
    out: list[tuple[str, QA]] = []
    used = set(drawn)
    for name in drawn:
        qa = QUESTION_TYPES[name][0](f, rng)
        answer_type = QUESTION_TYPES[name][2]
        tiers = (
            [n for n, spec in QUESTION_TYPES.items() if spec[2] == answer_type and n not in IMAGE_LEVEL],
            [n for n, spec in QUESTION_TYPES.items() if spec[2] != answer_type and n not in IMAGE_LEVEL],
        )
        for tier in tiers:
            pool = [n for n in tier if n not in used]
            while pool and qa is None:
                name = _draw_type(rng, pool)
                pool.remove(name)
                used.add(name)
                qa = QUESTION_TYPES[name][0](f, rng)
        if qa is not None:
            out.append((name, qa))
    return out


# ---- reports -------------------------------------------------------------------------------

PHRASES: dict[str, tuple[str, ...]] = {
    "header_ct": ("Axial CT of the abdomen.", "Axial CT image of the upper abdomen.", "Abdominal CT, axial view."),
    "header_mri": ("{plane} MRI of the brain.", "{plane} T2-weighted MR image of the head.", "Brain MRI, {plane} plane."),
    "header_x-ray": ("Frontal chest X-ray.", "PA chest radiograph.", "Chest X-ray, frontal view."),
    "lesion": ("{phrase} {verb} seen in the {where}.", "There {verb} {phrase} in the {where}.",
               "The {where} contains {phrase}."),
    "opacity": ("There is an opacity in the {where}.", "Patchy opacity is seen in the {where}."),
    "effusion": ("There is a pleural effusion in the {where}.", "Pleural fluid is seen in the {where}."),
    "enlarged": ("The {where} is enlarged.", "The {where} is dilated."),
    "enlarged_aorta": ("The abdominal aorta is dilated, consistent with an aneurysm.", "The aorta is enlarged."),
    "enlarged_heart": ("The heart is enlarged.", "Cardiomegaly is present."),
    "normal_size": ("The {where} is normal in size.", "The {where} is not enlarged."),
    "normal_aorta": ("The aorta is normal in caliber.", "The abdominal aorta is normal."),
    "normal_heart": ("The heart size is normal.", "Normal heart size."),
    "absent": ("The {where} is not seen in this slice.", "The {where} is not included in this slice."),
    "pacemaker": ("A cardiac pacemaker is seen in the {where}.", "A pacemaker is present in the {where}."),
    "normal": ("The {where} is unremarkable.", "The {where} appears normal.", "No lesion in the {where}."),
    "extra_ct": ("The vertebral body is intact.", "The spine is unremarkable."),
    "extra_mri": ("No midline shift.", "The skull is intact."),
    "extra_x-ray": ("No pneumothorax.", "The bones are intact."),
    "impression": ("No focal lesion is seen.", "No acute abnormality."),
}  # fmt: skip


def _say(rng: np.random.Generator, key: str, **fields: str) -> str:
    return say(rng, PHRASES, key, **fields)


def _lesion_sentence(f: Findings, les: Lesion, rng: np.random.Generator) -> str:
    where = NAMES[les.slot]
    if les.kind in ("opacity", "effusion"):
        return _say(rng, les.kind, where=where)
    singular, plural = _pick(rng, NOUNS[les.kind])
    words = [COUNT_WORDS[les.count], str(les.size)]
    if les.intensity is not None:
        words.append(_pick(rng, DENSITY[f.modality][les.intensity]))
    words.append(singular if les.count == 1 else plural)
    verb = "is" if les.count == 1 else "are"
    return _say(rng, "lesion", phrase=" ".join(words), verb=verb, where=where)


def report_statements(f: Findings) -> list[tuple[str, str]]:
    """The (phrase key, structure) statements a report of ``f`` makes, before wording and order."""
    out: list[tuple[str, str]] = []
    for key, flag in f.enlarged.items():
        if f.present.get(key, True):
            plain = key in ("aorta", "heart")
            out.append(((f"enlarged_{key}" if plain else "enlarged") if flag else
                        (f"normal_{key}" if plain else "normal_size"), key))
    for key, shown in f.present.items():
        if key.startswith("pacemaker"):
            if shown:
                out.append(("pacemaker", key))
        elif not shown:
            out.append(("absent", key))
    out.extend(("normal", s) for s in f.slots if not f.lesion_at(s))
    return out


def make_report(f: Findings, rng: np.random.Generator) -> str:
    """Header, the lesion sentences, then every other statement in random order, sometimes an extra
    sentence without structured content, and for images without lesions often an impression."""
    parts = [_say(rng, f"header_{f.modality}", plane=f.plane)]
    parts.extend(_lesion_sentence(f, les, rng) for les in f.lesions)
    statements = report_statements(f)
    for i in rng.permutation(len(statements)):
        key, where = statements[int(i)]
        parts.append(_say(rng, key, where=NAMES[where]))
    if rng.random() < 0.5:
        parts.append(_say(rng, f"extra_{f.modality}"))
    if not f.abnormal and rng.random() < 0.6:
        parts.append(_say(rng, "impression"))
    return " ".join(parts)
