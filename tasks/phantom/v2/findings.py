"""Rule-based finding labeler and Finding-F1 for ``phantom-report`` (protocol ``phantom-findings-v1``).

A report (reference or prediction) is split into sentences and each sentence is read by rules that
mirror the templates and synonyms of :mod:`medbench.tasks.phantom.v2.text` (``make_report``). A finding is a
``(category, value)`` pair:

- ``modality`` (``ct mri x-ray``) and ``plane`` (``axial coronal``; "frontal"/"PA" chest films are
  coronal), from any sentence;
- the lesion, decomposed so partial descriptions earn partial credit: ``lesion_kind`` (``cyst tumor
  nodule opacity effusion``), ``lesion_site`` (``liver spleen kidney hemisphere lung``),
  ``lesion_side``, ``lesion_count`` (``1 2 3`` ..., ``multiple`` for an uncounted plural),
  ``lesion_size``, ``lesion_intensity`` (``bright dark``) and ``lesion_zone`` (``upper lower``);
- ``enlarged`` (``aorta ventricles heart``) and ``device`` (``pacemaker``);
- normal statements ``normal`` (``liver spleen kidney_left kidney_right spine aorta hemisphere_left
  hemisphere_right ventricles midline lung_left lung_right heart pleura``; "both kidneys/lungs"
  expand to both sides), ``present`` (``eyes brainstem``) and ``absent`` (organs "not seen at this
  level").

Statements the generator adds at random (skull, bones, mediastinum, pneumothorax) and global
impressions ("No acute abnormality.") carry no structured truth and are not findings.
:func:`reference_findings` derives the same set from the generator's structured ``Findings``; every
generated report labels back to exactly that set (checked by the tests).

Per sample, ``finding_f1 = 2|R ∩ P| / (|R| + |P|)`` between the finding sets of the reference R and
the prediction P; an empty prediction scores 0 (counted ``n_empty``); when both sets are empty the
sample scores 1. The aggregate is the mean with a percentile-bootstrap CI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from medbench.tasks.phantom.finding_f1 import Finding, FindingF1, finding_f1, sentences

__all__ = ["PROTOCOL", "Finding", "FindingF1", "finding_f1", "label_report", "reference_findings"]

PROTOCOL = "phantom-findings-v1"
_ENLARGEABLE = {"ct": "aorta", "mri": "ventricles", "x-ray": "heart"}
_COUNTABLE = ("cyst", "tumor", "nodule")
_SIDED_SITES = ("kidney", "hemisphere", "lung")

_MODALITY = (
    ("ct", re.compile(r"\bct\b|computed tomograph|\bcat scan")),
    ("mri", re.compile(r"\bmri?\b|\bmr\b|magnetic resonance|t[12]-weighted")),
    ("x-ray", re.compile(r"x-?ray|radiograph|\bcxr\b")),
)
_PLANE = (
    ("axial", re.compile(r"\baxial\b|\btransverse\b")),
    ("coronal", re.compile(r"\bcoronal\b|\bfrontal\b|\bpa\b|\bap\b|posteroanterior")),
    ("sagittal", re.compile(r"\bsagittal\b")),
)
_NEGATION = re.compile(r"\b(no|not|without|free of|negative for)\b")
_ABSENT = re.compile(
    r"\bnot (seen|included|visible|present|identified)\b|\bno (kidney|spleen)s?\b|\babsent\b"
)
_ENLARGED = re.compile(r"\benlarge|\bdilat|\baneurysm|\bcardiomegaly|\bectatic\b")
_NORMAL = re.compile(
    r"unremarkable|\bnormal|\bclear\b|\bintact\b|\bpreserved\b|\bseen\b|\bincluded\b|\bvisible\b"
)
_KINDS = (
    ("cyst", re.compile(r"\bcyst(s|ic)?\b")),
    ("tumor", re.compile(r"\btumou?rs?\b|\bmass(es)?\b|\bneoplasm")),
    ("nodule", re.compile(r"\bnodules?\b")),
    ("opacity", re.compile(r"\bopacit(y|ies)\b|\bconsolidation\b")),
    ("effusion", re.compile(r"\beffusions?\b")),
)
_LESION_NOUN = re.compile(r"\blesions?\b|\babnormalit(y|ies)\b")
_PLURAL = re.compile(r"\b(cysts|cystic lesions|tumou?rs|masses|nodules|lesions)\b")
_COUNT_WORDS = {"one": "1", "single": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
_COUNT = re.compile(r"\b(one|single|two|three|four|five|\d+)\b")
_SIZE = (("small", re.compile(r"\b(small|tiny)\b")), ("large", re.compile(r"\b(large|big|huge)\b")))
_INTENSITY = (
    ("bright", re.compile(r"\bhyper(dense|intense|attenuating)\b|\bbright\b")),
    ("dark", re.compile(r"\bhypo(dense|intense|attenuating)\b|\bdark\b")),
)
_ZONE = (("upper", re.compile(r"\b(upper|apical)\b")), ("lower", re.compile(r"\blower\b")))
_SITES = (
    ("liver", re.compile(r"\b(liver|hepatic)\b")),
    ("spleen", re.compile(r"\b(spleen|splenic)\b")),
    ("kidney", re.compile(r"\b(kidney|renal)\b")),
    ("hemisphere", re.compile(r"\b(hemisphere|brain|cerebral)\b")),
    ("lung", re.compile(r"\b(lungs?|pleural|pulmonary)\b")),
)
_SIDE = re.compile(r"\b(left|right)\b")
# Structures of normal / absent statements; sided ones expand to both sides when no side is named.
_STRUCTURES = (
    ("liver", re.compile(r"\bliver\b")),
    ("spleen", re.compile(r"\bspleen\b")),
    ("kidney", re.compile(r"\bkidneys?\b")),
    ("spine", re.compile(r"\bvertebra|\bspine\b|\bbone abnormality\b")),
    ("aorta", re.compile(r"\baorta\b")),
    ("hemisphere", re.compile(r"\bhemispheres?\b")),
    ("ventricles", re.compile(r"\bventricles?\b")),
    ("midline", re.compile(r"\bmidline\b")),
    ("eyes", re.compile(r"\beyes?\b|\borbits?\b|\beyeballs?\b")),
    ("brainstem", re.compile(r"\bbrainstem\b|\bbrain stem\b")),
    ("lung", re.compile(r"\blungs?\b")),
    ("heart", re.compile(r"\bheart\b|\bcardiac silhouette\b")),
    ("pleura", re.compile(r"\beffusion")),
)
_PRESENCE_ONLY = ("eyes", "brainstem")
_SIDED_STRUCTURES = ("kidney", "hemisphere", "lung")


def _first(table: Sequence[tuple[str, re.Pattern[str]]], text: str) -> str | None:
    return next((name for name, rx in table if rx.search(text)), None)


def _structures(s: str) -> list[str]:
    """Structure keys named in a sentence; "kidneys"/"lungs" without a side mean both sides."""
    out: list[str] = []
    for name, rx in _STRUCTURES:
        if not rx.search(s):
            continue
        if name in _SIDED_STRUCTURES:
            sides = re.findall(rf"\b(left|right) {name}", s) or ["left", "right"]
            out.extend(f"{name}_{side}" for side in sides)
        else:
            out.append(name)
    return out


def _lesion(s: str) -> set[Finding]:
    """The attributes of a positive lesion sentence."""
    kind = _first(_KINDS, s)
    out: set[Finding] = set()
    if kind is not None:
        out.add(("lesion_kind", kind))
    site = _first(_SITES, s)
    if kind == "effusion":
        site = "lung"
    if site is not None:
        out.add(("lesion_site", site))
        side = _SIDE.search(s)
        if site in _SIDED_SITES and side:
            out.add(("lesion_side", side.group(1)))
    if kind in (*_COUNTABLE, None):
        number = _COUNT.search(s)
        if number:
            out.add(("lesion_count", _COUNT_WORDS.get(number.group(1), number.group(1))))
        else:
            out.add(("lesion_count", "multiple" if _PLURAL.search(s) else "1"))
    for category, table in (("lesion_size", _SIZE), ("lesion_intensity", _INTENSITY)):
        value = _first(table, s)
        if value is not None:
            out.add((category, value))
    if kind in ("nodule", "opacity", None):
        zone = _first(_ZONE, s)
        if zone is not None:
            out.add(("lesion_zone", zone))
    return out


def _enlarged(s: str) -> set[Finding]:
    out: set[Finding] = set()
    if re.search(r"\baort|\baneurysm", s):
        out.add(("enlarged", "aorta"))
    if re.search(r"\bventric", s):
        out.add(("enlarged", "ventricles"))
    if re.search(r"\bheart\b|\bcardiac\b|\bcardiomegaly", s):
        out.add(("enlarged", "heart"))
    return out


def _sentence(s: str) -> set[Finding]:
    """The findings of one lower-cased sentence."""
    out: set[Finding] = set()
    for category, table in (("modality", _MODALITY), ("plane", _PLANE)):
        value = _first(table, s)
        if value is not None:
            out.add((category, value))
    negated = _NEGATION.search(s) is not None
    if _ABSENT.search(s):
        return out | {("absent", k) for k in _structures(s)}
    if negated:
        return out | {("normal", k) for k in _structures(s) if k not in _PRESENCE_ONLY}
    if _ENLARGED.search(s):
        return out | _enlarged(s)
    if re.search(r"\bpacemaker\b", s):
        return out | {("device", "pacemaker")}
    if _first(_KINDS, s) is not None or _LESION_NOUN.search(s):
        return out | _lesion(s)
    if _NORMAL.search(s):
        out |= {("present" if k in _PRESENCE_ONLY else "normal", k) for k in _structures(s)}
    return out


def label_report(text: str | None) -> frozenset[Finding]:
    """The set of structured findings a (generated or predicted) phantom report states."""
    return frozenset().union(*(_sentence(s) for s in sentences(text)))


def reference_findings(findings: Any) -> frozenset[Finding]:
    """The findings a report of the generator's structured ``Findings`` (object or dict) states."""
    f = findings.to_json() if hasattr(findings, "to_json") else dict(findings)
    modality, present = f["modality"], dict(f.get("present") or {})
    out: set[Finding] = {("modality", modality), ("plane", f["plane"])}
    other = "left" if f["side"] == "right" else "right"
    if f["abnormal"]:
        kind, site = f["kind"], f["focus"].split("_")[0]
        out |= {("lesion_kind", kind), ("lesion_site", site)}
        if site in _SIDED_SITES:
            out.add(("lesion_side", f["side"]))
        if kind in _COUNTABLE:
            out.add(("lesion_count", str(f["count"])))
        if kind in ("nodule", "opacity"):
            out.add(("lesion_zone", f["zone"]))
        out |= {(f"lesion_{k}", f[k]) for k in ("size", "intensity") if f.get(k) is not None}
    if f["enlarged"]:
        out.add(("enlarged", _ENLARGEABLE[modality]))
    else:
        out.add(("normal", _ENLARGEABLE[modality]))
    if present.get("pacemaker"):
        out.add(("device", "pacemaker"))
    host = f["focus"] if f["abnormal"] else None
    if modality == "ct":
        out.add(("normal", "spine"))
        for organ in ("liver", "spleen", "kidney_left", "kidney_right"):
            if organ != host:
                out.add(("normal" if present.get(organ, True) else "absent", organ))
    elif modality == "mri":
        out.add(("normal", "midline"))
        out |= {("present", k) for k in _PRESENCE_ONLY if present.get(k)}
        if f["abnormal"]:
            out.add(("normal", f"hemisphere_{other}"))
    else:
        out |= {("normal", f"lung_{s}") for s in ((other,) if f["abnormal"] else ("left", "right"))}
        if f.get("kind") != "effusion":
            out.add(("normal", "pleura"))
    return frozenset(out)




def finding_metric(seed: int = 0) -> FindingF1:
    """Finding-F1 with the version-2 labeler (protocol ``phantom-findings-v1``)."""
    return FindingF1(label_report, PROTOCOL, "rules mirroring the phantom v2 report templates", seed=seed)
