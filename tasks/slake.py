"""SLAKE (Slake1.0), English subset, official splits, with ground-truth RoIs (spec §2.2).

Layout: ``DIR/{train.json, validate.json | validation.json, test.json, imgs/xmlab<N>/{source.jpg,
detection.json, mask.png}}`` (``DIR`` may also be the folder holding ``Slake1.0/``). Each split
file is a JSON list of records; ``img_name`` is relative to ``imgs/``; ids are
``slake-<split>-<qid>``; only ``q_lang == "en"`` is kept (the ``zh`` rows are counted in
``provenance["filtered"]``); OPEN/CLOSED comes from ``answer_type``.

RoIs come from ``detection.json`` (``[{label: [x, y, w, h]}, ...]`` in ``source.jpg`` pixels) and
are matched to the question (spec §2.2, in order): 1. the full label in the question as whole
words; 2. the label's head noun (last word) in the question, every label sharing it; 3. rules 1–2
on the answer (``roi_match="answer"``); 4. no RoI (``roi_fallback="all"`` uses every box instead).
Texts are lower-cased, ``_`` → space, whitespace collapsed. ``mask_mode="union"`` uses ``mask.png``
(all non-zero pixels) as the RoI of every record with a mask; masks are off by default.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from medbench.tasks._common import MalformedDataError, RealTask, RecordError, get_field, read_json
from medbench.types import AnswerType, RoI, Sample

log = logging.getLogger("medbench.tasks")

SPLIT_FILES = {"train": ("train.json",), "val": ("validate.json", "validation.json"), "test": ("test.json",)}
ROI_RULES = ("label", "head", "answer", "all", "none")


def normalise(text: str) -> str:
    """Lower-case, ``_`` → space, whitespace collapsed (the RoI matching normalisation)."""
    return " ".join(text.lower().replace("_", " ").split())


def _has_words(text: str, words: str) -> bool:
    return bool(words) and re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) is not None


def _match_text(text: str, labels: list[str]) -> tuple[list[str], str] | None:
    norm = {label: normalise(label) for label in labels}
    full = [label for label in labels if _has_words(text, norm[label])]
    if full:
        return full, "label"
    heads = {label: norm[label].split()[-1] for label in labels if norm[label]}
    hit = {h for h in heads.values() if _has_words(text, h)}
    by_head = [label for label in labels if heads.get(label) in hit]
    return (by_head, "head") if by_head else None


def match_rois(question: str, answer: str, labels: list[str]) -> tuple[list[str], str]:
    """The matched labels and the rule that matched: ``label``, ``head``, ``answer`` or ``none``."""
    found = _match_text(normalise(question), labels)
    if found:
        return found
    found = _match_text(normalise(answer), labels)
    if found:
        return found[0], "answer"
    return [], "none"


def parse_detection(path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """``[(label, (x0, y0, x1, y1))]`` from a ``detection.json`` of ``{label: [x, y, w, h]}`` objects."""
    data = read_json(path)
    if not isinstance(data, list):
        raise MalformedDataError(f"{path}: expected a JSON list of {{label: [x, y, w, h]}} objects")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise MalformedDataError(f"{path} entry {i}: expected an object {{label: [x, y, w, h]}}")
        for label, box in entry.items():
            if (not isinstance(box, list) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                raise MalformedDataError(f"{path} entry {i} field {label!r}: expected [x, y, w, h] numbers")
            x, y, w, h = (float(v) for v in box)
            out.append((str(label), (x, y, x + w, y + h)))
    return out


class SLAKE(RealTask):
    """SLAKE English VQA (Table 6: 4,919 train / 1,061 test) with detection-box RoIs."""

    name = "slake"
    label = "SLAKE"
    kind = "vqa"
    version = "1"
    metric_protocol = "llava_med"
    splits = ("train", "val", "test")
    section = "§2.2"
    table6 = {"train": 4919, "test": 1061}
    expected_layout = (
        "DIR/train.json, DIR/test.json, DIR/validate.json (or validation.json),\n"
        "DIR/imgs/xmlab<N>/{source.jpg, detection.json, mask.png}\n"
        "(DIR is the Slake1.0 folder, or a folder that contains Slake1.0/)"
    )

    def __init__(self, data_root: str | os.PathLike | None = None, *, strict: bool = False,
                 roi_fallback: str = "none", mask_mode: str = "off"):
        """``roi_fallback``: ``"none"`` (spec rule 4) or ``"all"`` boxes when nothing matches;
        ``mask_mode``: ``"off"`` (default) or ``"union"``."""
        super().__init__(data_root, strict=strict)
        if roi_fallback not in ("none", "all") or mask_mode not in ("off", "union"):
            raise ValueError("roi_fallback must be 'none' or 'all'; mask_mode 'off' or 'union'")
        self.roi_fallback, self.mask_mode = roi_fallback, mask_mode
        self.roi_rule_counts: dict[str, Counter] = {}
        self._detections: dict[Path, list[tuple[str, tuple[float, float, float, float]]] | None] = {}

    def base(self) -> Path:
        base = self.find_dir("", "Slake1.0", marker="train.json")
        self.require(base / "test.json")
        self.require(base / "imgs")
        return base

    def split_file(self, base: Path, split: str) -> Path:
        for name in SPLIT_FILES[split]:
            if (base / name).is_file():
                if split == "val":
                    log.info("slake: validation split read from %s", name)
                    self.provenance["val_file"] = name
                return base / name
        raise self.layout_error(f"missing {' or '.join(str(base / n) for n in SPLIT_FILES[split])}")

    def _detection(self, folder: Path) -> list[tuple[str, tuple[float, float, float, float]]] | None:
        if folder not in self._detections:
            path = folder / "detection.json"
            try:
                self._detections[folder] = parse_detection(path) if path.is_file() else None
            except MalformedDataError as exc:
                if self.strict:
                    raise
                log.warning("slake: %s; the image gets no RoI", exc)
                self.provenance.setdefault("detection_errors", []).append(str(exc))
                self._detections[folder] = None
        return self._detections[folder]

    def _load(self, split: str) -> Iterable[Sample]:
        base = self.base()
        path = self.split_file(base, split)
        records = read_json(path)
        if not isinstance(records, list):
            raise MalformedDataError(f"{path}: expected a JSON list of question records")
        rules: Counter = Counter()
        filtered: Counter = Counter()
        images: set[str] = set()
        for i, rec in enumerate(records):
            rid = f"slake-{split}-record{i}"
            try:
                qid = get_field(rec, "qid", (int, str), path, i)
                rid = f"slake-{split}-{qid}"
                lang = get_field(rec, "q_lang", str, path, qid)
                if lang != "en":
                    filtered[f"q_lang={lang}"] += 1
                    continue
                question = get_field(rec, "question", str, path, qid)
                answer = str(get_field(rec, "answer", (str, int, float), path, qid))
                img_name = get_field(rec, "img_name", str, path, qid)
                kind = get_field(rec, "answer_type", str, path, qid).strip().upper()
                if kind not in ("OPEN", "CLOSED"):
                    raise RecordError(path, qid, "answer_type", f"expected OPEN or CLOSED, got {kind!r}")
            except RecordError as exc:
                self.bad_record(rid, exc)
                continue
            if not answer.strip():
                self.skip(rid, "empty-answer")
                continue
            image = self.image_path(rid, base / "imgs", img_name)
            if image is None:
                continue
            images.add(img_name)
            roi, rule, labels = self._roi(image, question, answer)
            rules[rule] += 1
            yield Sample(
                id=rid, image_path=str(image), question=question.strip(), answer=answer,
                answer_type=AnswerType(kind.lower()), split=split, roi=roi,
                meta={"dataset": "slake", "gold": answer, "lang": lang, "modality": rec.get("modality"),
                      "location": rec.get("location"), "content_type": rec.get("content_type"),
                      "base_type": rec.get("base_type"), "roi_match": rule, "roi_labels": labels, "source": rec},
            )
        self.roi_rule_counts[split] = rules
        self.provenance.setdefault("filtered", {})[split] = dict(filtered)
        self.provenance.setdefault("images", {})[split] = len(images)
        self.provenance.setdefault("roi_rules", {})[split] = dict(rules)
        log.info("slake %s: %d images; RoI rules %s; filtered %s", split, len(images), dict(rules), dict(filtered))

    def _roi(self, image: Path, question: str, answer: str) -> tuple[RoI | None, str, list[str]]:
        mask = image.parent / "mask.png"
        if self.mask_mode == "union" and mask.is_file():
            return RoI(mask_path=str(mask), label="mask-union"), "mask", []
        boxes = self._detection(image.parent) or []
        labels = list(dict.fromkeys(label for label, _ in boxes))
        matched, rule = match_rois(question, answer, labels)
        if not matched and self.roi_fallback == "all" and boxes:
            matched, rule = labels, "all"
        if not matched:
            return None, "none", []
        chosen = tuple(box for label, box in boxes if label in matched)
        return RoI(boxes=chosen, label=", ".join(matched)), rule, matched
