"""OmniMedVQA (CARES multiple choice), derived split stratified by source dataset (spec §2.6, §2.9).

Layout: ``DIR/omnimedvqa_factuality.jsonl`` (also found at ``DIR/CARES/data/OmniMedVQA/`` or
``DIR/data/OmniMedVQA/``) and the OpenGVLab images ``DIR/Images/<dataset>/...`` (or
``DIR/OmniMedVQA/Images/...``, or ``images_root=`` pointing at the folder that holds ``Images/``);
each row's ``image`` is ``Images/<dataset>/.../<file>``.

Rows are multiple choice with ``option_A`` … ``option_D`` (2–4 present). medbench's answer types
are OPEN/CLOSED/REPORT, so MC rows are CLOSED with ``meta["answer_format"] = "MC"``,
``meta["options"]`` and ``meta["gold"]`` (the option letter whose text equals ``answer`` after
strip and casefold); they are scored by ``metric_protocol = "mc@difflib"``. A row whose answer
matches no unique option is skipped (``mc-no-gold``). The question is ``text`` without the image
placeholder; when it does not already list every option, `` options: A, B, C, D`` is appended,
following A3Tune's human turn. Ids are ``omnimedvqa-L<line:05d>`` because ``question_id`` is not
known to be unique. Split: ``sha256-group-v1`` grouped by image and stratified by ``dataset``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medbench.tasks._common import (
    CaresTask,
    MalformedDataError,
    RecordError,
    Row,
    check_hash,
    get_field,
    read_jsonl,
    strip_image_placeholder,
)
from medbench.types import AnswerType, Sample

CARES_FILE = "omnimedvqa_factuality.jsonl"
CARES_DIRS = ("", "CARES/data/OmniMedVQA", "data/OmniMedVQA")
LETTERS = ("A", "B", "C", "D")


def mc_gold(answer: str, options: list[str]) -> str | None:
    """The letter of the unique option equal to ``answer`` after strip and casefold, else ``None``."""
    key = answer.strip().casefold()
    hits = [LETTERS[i] for i, opt in enumerate(options) if opt.strip().casefold() == key]
    return hits[0] if len(hits) == 1 else None


def mc_question(text: str, options: list[str]) -> tuple[str, bool]:
    """The bare question with its options, and whether ``text`` already listed them."""
    question = strip_image_placeholder(text)
    folded = question.casefold()
    if all(opt.strip().casefold() in folded for opt in options):
        return question, True
    return f"{question} options: {', '.join(opt.strip() for opt in options)}", False


class OmniMedVQA(CaresTask):
    """OmniMedVQA multiple choice (Table 6: 6,155 train / 2,642 test)."""

    name = "omnimedvqa"
    kind = "vqa"
    version = "1"
    metric_protocol = "mc@difflib"
    section = "§2.6, §2.9"
    dataset_id = "omnimedvqa-cares"
    table6 = {"train": 6155, "test": 2642}
    expected_layout = (
        f"DIR/{CARES_FILE} (or DIR/CARES/data/OmniMedVQA/{CARES_FILE})\n"
        "DIR/Images/<dataset>/.../<file> (the OpenGVLab OmniMedVQA images; or DIR/OmniMedVQA/Images/)"
    )

    cares_name = CARES_FILE
    cares_dirs = CARES_DIRS

    def images_dir(self) -> Path:
        if self.images_root is not None:
            if not (self.images_root / "Images").is_dir():
                raise self.layout_error(f"images_root {self.images_root} has no Images/ folder")
            return self.images_root
        return self.find_dir("", "OmniMedVQA", marker="Images")

    def source_files(self) -> list[Path]:
        return [self.cares_file()]

    def read_rows(self) -> list[Row]:
        path, images = self.cares_file(), self.images_dir()
        rows: list[Row] = []
        keys: Counter = Counter()
        in_text = 0
        for lineno, rec in read_jsonl(path):
            rid = f"omnimedvqa-L{lineno:05d}"
            where = f"line {lineno}"
            try:
                if isinstance(rec, RecordError):
                    raise rec
                keys.update(rec.keys() if isinstance(rec, dict) else [])
                text = get_field(rec, "text", str, path, where)
                answer = str(get_field(rec, "answer", (str, int, float), path, where))
                image = get_field(rec, "image", str, path, where)
                dataset = str(get_field(rec, "dataset", (str, int), path, where))
                options = [get_field(rec, "option_A", (str, int, float), path, where),
                           get_field(rec, "option_B", (str, int, float), path, where)]
                for letter in ("C", "D"):
                    extra = get_field(rec, f"option_{letter}", (str, int, float), path, where, required=False)
                    if extra is None or not str(extra).strip():
                        break
                    options.append(extra)
                options = [str(o) for o in options]
            except RecordError as exc:
                if self.strict:
                    raise MalformedDataError(str(exc)) from exc
                rows.append(Row(rid, rid, "", "", None, None, skip=f"malformed: {exc}"))
                continue
            question, listed = mc_question(text, options)
            in_text += listed
            gold = mc_gold(answer, options)
            skip = None
            if not answer.strip():
                skip = "empty-answer"
            elif gold is None:
                skip = f"mc-no-gold: answer {answer[:60]!r} matches no single option"
            sample = Sample(
                id=rid, image_path=image, question=question, answer=answer, answer_type=AnswerType.CLOSED, split="",
                meta={"dataset": "omnimedvqa", "source_dataset": dataset, "answer_format": "MC", "options": options,
                      "gold": gold, "lang": "en", "options_in_text": listed, "source": rec},
            )
            rows.append(Row(rid, image, dataset, check_hash(image, question), sample, images, skip=skip))
        self.provenance.update(rows=len(rows), keys=dict(keys), options_already_in_text=in_text)
        return rows
