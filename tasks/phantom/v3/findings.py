"""Finding labels of phantom v3 reports (protocol ``phantom-findings-v3``).

A report is split into sentences; each sentence names structures by the same names the generator
uses (:data:`medbench.tasks.phantom.v3.text.NAMES`, longest match first) and is read by a few
rules. Findings are ``(category, value)`` pairs, place-specific wherever v3's questions are:

- ``modality`` and ``plane``;
- per lesion slot: ``lesion`` (the slot), ``lesion_kind``/``lesion_count``/``lesion_size``/
  ``lesion_intensity`` as ``"<slot>:<value>"`` (a partly right description earns partial credit);
- ``enlarged`` / ``normal_size`` (kidneys, lateral ventricles, aorta, heart), ``absent`` (kidney
  or eye out of the slice), ``device`` (pacemaker side) and ``normal`` (a lesion-free slot).

Sentences without structured content ("No pneumothorax.", impressions) give no findings.
:func:`reference_findings` derives the same set from the structured findings; every generated
report labels back to exactly that set (checked by the tests).
"""

from __future__ import annotations

import re
from typing import Any

from medbench.tasks.phantom.finding_f1 import Finding, FindingF1, sentences
from medbench.tasks.phantom.v3.text import NAMES, report_statements

PROTOCOL = "phantom-findings-v3"
_CATEGORY = {  # report statement key -> finding category
    "enlarged": "enlarged", "enlarged_aorta": "enlarged", "enlarged_heart": "enlarged",
    "normal_size": "normal_size", "normal_aorta": "normal_size", "normal_heart": "normal_size",
    "absent": "absent", "pacemaker": "device", "normal": "normal",
}
_BY_NAME = sorted(((name, key) for key, name in NAMES.items()), key=lambda kv: -len(kv[0]))
_STRUCTURE = re.compile("|".join(rf"\b{re.escape(name)}\b" for name, _ in _BY_NAME))
_KEY = {name: key for name, key in _BY_NAME}
_MODALITY = (("ct", re.compile(r"\bct\b|computed tomograph")), ("mri", re.compile(r"\bmri?\b|\bmr\b|magnetic")),
             ("x-ray", re.compile(r"x-?ray|radiograph")))
_PLANE = (("axial", re.compile(r"\baxial\b")), ("coronal", re.compile(r"\bcoronal\b|\bfrontal (chest|radiograph|view)\b|frontal view|\bpa\b")))
_KINDS = (("cyst", re.compile(r"\bcyst(s|ic)?\b")), ("tumor", re.compile(r"\btumou?rs?\b|\bmass(es)?\b")),
          ("nodule", re.compile(r"\bnodules?\b")), ("opacity", re.compile(r"\bopacit(y|ies)\b")),
          ("effusion", re.compile(r"\beffusion\b|\bpleural fluid\b")))
_SIZE = (("small", re.compile(r"\bsmall\b")), ("large", re.compile(r"\blarge\b")))
_INTENSITY = (("bright", re.compile(r"\bhyper(dense|intense)\b|\bbright\b")),
              ("dark", re.compile(r"\bhypo(dense|intense)\b|\bdark\b")))
_TWO = re.compile(r"\btwo\b|\b2\b|\b(cysts|cystic lesions|tumou?rs|masses|nodules|lesions)\b")
_ABSENT = re.compile(r"\bnot (seen|included|visible)\b|\babsent\b|\bmissing\b")
_DEVICE = re.compile(r"\bpacemaker\b|\bcardiac device\b")
_NORMAL_SIZE = re.compile(r"\bnormal in (size|caliber)\b|\bnot (enlarged|dilated)\b|\bnormal heart size\b|"
                          r"\bheart size is normal\b|\baorta is normal\b")
_ENLARGED = re.compile(r"\benlarged\b|\bdilated\b|\baneurysm\b|\bcardiomegaly\b")
_NORMAL = re.compile(r"\bunremarkable\b|\bappears? normal\b|\bno lesions?\b|\bnormal\b|\bclear\b")


def _first(table: tuple[tuple[str, re.Pattern[str]], ...], text: str) -> str | None:
    return next((name for name, rx in table if rx.search(text)), None)


def _structures(s: str) -> list[str]:
    found = [_KEY[m.group(0)] for m in _STRUCTURE.finditer(s)]
    if re.search(r"\bcardiomegaly\b|\bcardiac silhouette\b", s):
        found.append("heart")
    if re.search(r"\baneurysm\b", s):
        found.append("aorta")
    return found


def _lesion(slot: str, s: str) -> set[Finding]:
    out: set[Finding] = {("lesion", slot)}
    kind = _first(_KINDS, s)
    if kind is not None:
        out.add(("lesion_kind", f"{slot}:{kind}"))
    if kind in ("cyst", "tumor", "nodule"):
        out.add(("lesion_count", f"{slot}:{2 if _TWO.search(s) else 1}"))
    for category, table in (("lesion_size", _SIZE), ("lesion_intensity", _INTENSITY)):
        value = _first(table, s)
        if value is not None:
            out.add((category, f"{slot}:{value}"))
    return out


def _sentence(s: str) -> set[Finding]:
    """The findings of one lower-cased sentence."""
    out: set[Finding] = set()
    for category, table in (("modality", _MODALITY), ("plane", _PLANE)):
        value = _first(table, s)
        if value is not None:
            out.add((category, value))
    names = _structures(s)
    if not names:
        return out
    if _ABSENT.search(s):
        return out | {("absent", k) for k in names}
    if _DEVICE.search(s):
        return out | {("device", k) for k in names if k.startswith("pacemaker")}
    if _NORMAL_SIZE.search(s):
        return out | {("normal_size", k) for k in names}
    if _ENLARGED.search(s):
        return out | {("enlarged", k) for k in names}
    if _NORMAL.search(s):
        return out | {("normal", k) for k in names}
    if _first(_KINDS, s) is not None or re.search(r"\blesions?\b|\babnormalit", s):
        for slot in names:
            out |= _lesion(slot, s)
    return out


def label_report(text: str | None) -> frozenset[Finding]:
    """The set of structured findings a (generated or predicted) phantom v3 report states."""
    return frozenset().union(*(_sentence(s) for s in sentences(text)))


def reference_findings(findings: Any) -> frozenset[Finding]:
    """The findings a report of v3 structured ``Findings`` (object or its JSON dict) states."""
    from medbench.tasks.phantom.v3.anatomy import Findings, Lesion

    if isinstance(findings, Findings):
        f = findings
    else:
        d = dict(findings)
        f = Findings(d["modality"], d["plane"], d["region"], [Lesion(**x) for x in d["lesions"]],
                     dict(d["enlarged"]), dict(d["present"]))
    out: set[Finding] = {("modality", f.modality), ("plane", f.plane)}
    for les in f.lesions:
        out |= {("lesion", les.slot), ("lesion_kind", f"{les.slot}:{les.kind}")}
        if les.kind in ("cyst", "tumor", "nodule"):
            out.add(("lesion_count", f"{les.slot}:{les.count}"))
        out |= {(f"lesion_{a}", f"{les.slot}:{getattr(les, a)}") for a in ("size", "intensity")
                if getattr(les, a) is not None}
    out |= {(_CATEGORY[key], where) for key, where in report_statements(f)}
    return frozenset(out)


def finding_metric(seed: int = 0) -> FindingF1:
    """Finding-F1 with the version-3 labeler (protocol ``phantom-findings-v3``)."""
    return FindingF1(label_report, PROTOCOL, "rules over the phantom v3 structure names", seed=seed)
