"""IU-Xray: CARES closed VQA (derived split, spec §2.5 and §2.9) and R2Gen report generation (§2.7).

``iu-xray-vqa`` layout: ``DIR/iuxray_factuality.jsonl`` (also found at
``DIR/CARES/data/IU-Xray/`` or ``DIR/data/IU-Xray/``) and the R2Gen images at
``DIR/iu_xray/images/<study>/0.png`` (or ``DIR/images/``); when the images stay in the R2Gen folder,
``image_root=`` (``--image-root``) points at R2Gen's ``iu_xray/``, its parent, or ``images/`` itself. ``question_id`` is 0
on every row, so ids are ``iuxray-cares-L<line:05d>`` (0-based line number). The trailing
``\\n<image>`` is stripped; every row is CLOSED; the scored answer is the gold label, the first
whole-word yes/no of the lower-cased free-text answer (kept in ``meta["answer_original"]``).
Empty answers (skip ``empty-answer``) and answers without yes/no (skip ``hedged-answer``) are
unscorable rows: they stay in their split (and in the split draw) but are never loaded, scored or
trained on (:data:`~medbench.tasks._common.UNSCORABLE_RULE`). Split: ``sha256-group-v1`` grouped by image, seed 0, 30 % test;
a manifest in ``manifests/`` overrides it.

``iu-xray-report`` layout: ``DIR/annotation.json`` (``{"train": [...], "val": [...], "test": [...]}``
of ``{"id", "report", "image_path": [...], "split"}``) and ``DIR/images/<id>/{0,1}.png`` (``DIR``
is ``iu_xray/`` or a folder that contains it). Only ``image_path[0]`` is used, as A3Tune did;
``XXXX`` placeholders are kept; ids are ``iuxray-report-<id>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from medbench.tasks._common import (
    CaresTask,
    MalformedDataError,
    RealTask,
    RecordError,
    Row,
    check_hash,
    get_field,
    read_json,
    read_jsonl,
    strip_image_placeholder,
    yes_no_gold,
)
from medbench.types import AnswerType, Sample

log = logging.getLogger("medbench.tasks")

CARES_FILE = "iuxray_factuality.jsonl"
CARES_DIRS = ("", "CARES/data/IU-Xray", "data/IU-Xray")
REPORT_INSTRUCTION = "Analyze the chest X-ray and generate a concise medical report."


class IUXrayVQA(CaresTask):
    """CARES IU-Xray yes/no VQA (Table 6: 1,789 train / 784 test of 2,573 rows)."""

    name = "iu-xray-vqa"
    label = "IU-Xray"
    kind = "vqa"
    version = "1"
    metric_protocol = "llava_med"
    section = "§2.5, §2.9"
    dataset_id = "iu-xray-vqa-cares"
    table6 = {"train": 1789, "test": 784}
    expected_layout = (
        f"DIR/{CARES_FILE} (or DIR/CARES/data/IU-Xray/{CARES_FILE})\n"
        "DIR/iu_xray/images/<study>/0.png (the R2Gen images; or DIR/images/),\n"
        "or the images elsewhere: --image-root R2GEN_DIR (R2Gen's iu_xray/, its parent, or its images/)"
    )

    cares_name = CARES_FILE
    cares_dirs = CARES_DIRS

    def images_dir(self) -> Path:
        """R2Gen's ``images/`` folder: under the image root when one is given, else under the data root."""
        if self.image_root is not None:
            root = self.checked_image_root()
            for cand in (root / "iu_xray" / "images", root / "images"):
                if cand.is_dir():
                    return cand
            return root  # the images/ folder itself
        return self.find_dir("iu_xray", "", marker="images") / "images"

    def source_files(self) -> list[Path]:
        return [self.cares_file()]

    def read_rows(self) -> list[Row]:
        path, images = self.cares_file(), self.images_dir()
        rows: list[Row] = []
        text_differs = 0
        for lineno, rec in read_jsonl(path):
            rid = f"iuxray-cares-L{lineno:05d}"
            try:
                if isinstance(rec, RecordError):
                    raise rec
                raw_q = get_field(rec, "question", str, path, f"line {lineno}")
                answer = get_field(rec, "answer", str, path, f"line {lineno}", required=False, default="")
                image = get_field(rec, "image", str, path, f"line {lineno}")
            except RecordError as exc:
                if self.strict:
                    raise MalformedDataError(str(exc)) from exc
                rows.append(Row(rid, rid, "", "", None, None, skip=f"malformed: {exc}"))
                continue
            text_differs += rec.get("text", raw_q) != raw_q
            question = strip_image_placeholder(raw_q)
            gold = yes_no_gold(answer)
            skip = None
            if not answer.strip():
                skip = "empty-answer"
            elif gold is None:
                skip = f"hedged-answer: no yes/no in {answer[:80]!r}"
            sample = Sample(
                id=rid, image_path=image, question=question, answer=gold or "", answer_type=AnswerType.CLOSED,
                split="", meta={"dataset": "iu-xray-vqa", "gold": gold, "answer_original": answer, "lang": "en",
                                "image": image, "source": rec},
            )
            rows.append(Row(rid, image, "", check_hash(image, question), sample, images, skip=skip))
        self.provenance["rows"] = len(rows)
        self.provenance["text_differs_from_question"] = text_differs
        self._log_overlap(rows)
        return rows

    def _log_overlap(self, rows: list[Row]) -> None:
        """Log how many CARES images are R2Gen training images (unconfirmed in the spec)."""
        bases = [self.root()] + ([self.image_root] if self.image_root is not None else [])
        found = [b / sub / "annotation.json" for b in bases for sub in ("iu_xray", "", "..")
                 if (b / sub / "annotation.json").is_file()]
        if not found:
            return
        ann = found[0]
        data = read_json(ann)
        train = {e.get("id") for e in data.get("train", []) if isinstance(e, dict)} if isinstance(data, dict) else set()
        studies = {r.group.split("/")[0] for r in rows if r.sample is not None}
        overlap = len(studies & train)
        self.provenance["r2gen_train_overlap"] = {"images": len(studies), "in_r2gen_train": overlap}
        log.info("iu-xray-vqa: %d of %d CARES images are R2Gen training studies", overlap, len(studies))


class IUXrayReport(RealTask):
    """IU-Xray report generation, R2Gen split (Table 6: 2,069 train / 590 test)."""

    name = "iu-xray-report"
    label = "IU-Xray"
    kind = "report"
    version = "1"
    metric_protocol = "coco"
    splits = ("train", "val", "test")
    section = "§2.7"
    table6 = {"train": 2069, "test": 590}
    expected_layout = (
        "DIR/annotation.json ({\"train\": [...], \"val\": [...], \"test\": [...]})\n"
        "DIR/images/<id>/{0,1}.png\n(DIR is R2Gen's iu_xray folder, or a folder that contains iu_xray/)"
    )

    def base(self) -> Path:
        base = self.find_dir("", "iu_xray", marker="annotation.json")
        self.require(base / "images")
        return base

    def _load(self, split: str) -> Iterable[Sample]:
        base = self.base()
        path = base / "annotation.json"
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get(split), list):
            raise MalformedDataError(f"{path}: expected an object with a list under {split!r}")
        for i, rec in enumerate(data[split]):
            rid = f"iuxray-report-{split}-record{i}"
            try:
                sid = get_field(rec, "id", str, path, f"{split}[{i}]")
                rid = f"iuxray-report-{sid}"
                report = get_field(rec, "report", str, path, sid)
                images = get_field(rec, "image_path", list, path, sid)
                if not images or not isinstance(images[0], str):
                    raise RecordError(path, sid, "image_path", "expected a non-empty list of paths")
            except RecordError as exc:
                self.bad_record(rid, exc)
                continue
            if not report.strip():
                self.skip(rid, "empty-answer")
                continue
            image = self.image_path(rid, base / "images", images[0])
            if image is None:
                continue
            yield Sample(
                id=rid, image_path=str(image), question=REPORT_INSTRUCTION, answer=report,
                answer_type=AnswerType.REPORT, split=split,
                meta={"dataset": "iu-xray-report", "gold": report, "lang": "en", "views": len(images), "source": rec},
            )
