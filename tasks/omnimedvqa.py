"""OmniMedVQA multiple choice, derived split stratified by source dataset (spec §2.6, §2.9).

Two layouts are accepted under the data root ``DIR``:

- **CARES** (the paper's source, Table 6): ``DIR/omnimedvqa_factuality.jsonl`` (also found at
  ``DIR/CARES/data/OmniMedVQA/`` or ``DIR/data/OmniMedVQA/``); each row's ``image`` is
  ``Images/<dataset>/.../<file>``, resolved against the OpenGVLab release folder: ``DIR`` itself
  (``DIR/Images/``), ``DIR/OmniMedVQA/``, or the image root (``image_root=`` / ``--image-root``,
  the folder that holds ``Images/`` or its parent). Ids are ``omnimedvqa-L<line:05d>`` because
  ``question_id`` is not known to be unique. Split id ``omnimedvqa-cares``.
- **Official release** (OpenGVLab OmniMedVQA): ``DIR/QA_information/{Open-access,Restricted-access}/
  <Dataset>.json`` (or under ``DIR/OmniMedVQA/``), each a JSON list of ``{question_id, question,
  gt_answer, option_A..option_D, image_path, modality_type, question_type, dataset}``, and the images
  ``DIR/Images/<Dataset>/...`` (or under the image root). Ids are ``omnimedvqa-<question_id>``; a
  repeated ``question_id`` is skipped as ``duplicate-id``. Split id ``omnimedvqa-release``. A
  missing access folder is not an error: the other one is loaded and the missing one is named in
  ``provenance["missing"]`` and in a warning. Restricted-access images are not in the public
  ``Images/`` download; rows whose image is absent are skipped as ``image-missing``.

When both layouts sit in one data root, the CARES file is used (it is what Table 6 and A3Tune's
training counts were built from); the release folder is named in ``provenance["ignored"]`` and in
a warning. Point ``--data-root`` at the release folder alone to use the release.

Every row is multiple choice (answer type ``mc``) with ``option_A`` … ``option_D`` (2–4 present,
in order; the first empty option ends the list). ``meta["options"]`` is the list of option texts and
``meta["gold"]`` the option letter given by :func:`mc_gold` (:data:`ANSWER_RULE`); the sample's
``answer`` is that option's text (the original is ``meta["answer_original"]``), so the ``mc@difflib``
scorer maps the label to the right option. A row whose answer maps to no single option is unscorable
(``mc-no-gold``; :data:`~medbench.tasks._common.UNSCORABLE_RULE`). The question is the question text
without the image placeholder; when it does not already list every option, `` options: A, B, C, D``
is appended, following A3Tune's human turn (spec §4.5). That prompt joins the options with ", ", as
A3Tune did; scoring never parses it: it reads the options list. Split: ``sha256-group-v1`` grouped by
image and stratified by ``dataset``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from medbench.tasks._common import (
    CaresTask,
    MalformedDataError,
    RecordError,
    Row,
    check_hash,
    get_field,
    read_json,
    read_jsonl,
    strip_image_placeholder,
)
from medbench.types import AnswerType, Sample

log = logging.getLogger("medbench.tasks")

CARES_FILE = "omnimedvqa_factuality.jsonl"
CARES_DIRS = ("", "CARES/data/OmniMedVQA", "data/OmniMedVQA")
RELEASE_DIRS = ("", "OmniMedVQA")
QA_DIR = "QA_information"
ACCESS_DIRS = ("Open-access", "Restricted-access")
LETTERS = ("A", "B", "C", "D")
ANSWER_RULE = (
    "An answer maps to an option letter by the first rule that applies: (1) its text equals exactly one "
    "option's text after trimming whitespace and trailing punctuation (. , ; : ! ?) and casefolding; "
    "(2) it is a bare option letter ('B', 'B.', '(B)'); (3) it is 'letter:text' or 'letter. text' or "
    "'(letter) text' and the text equals that letter's option by rule 1's comparison. A letter that is not "
    "among the row's options, a 'letter:text' whose text belongs to another option, or a text matching "
    "none or several options maps to nothing (the row is unscorable, mc-no-gold)."
)
_TRAILING = ".,;:!? \t\r\n"
_BARE_LETTER = re.compile(r"^\(?([A-D])\)?\.?$")
_LETTER_TEXT = re.compile(r"^(?:\(([A-D])\)|([A-D])\s*[:.)])\s*(.+)$", re.DOTALL)


def _norm(text: str) -> str:
    return " ".join(text.split()).rstrip(_TRAILING).strip().casefold()


def mc_gold(answer: str, options: list[str]) -> str | None:
    """The option letter ``answer`` maps to under :data:`ANSWER_RULE`, else ``None``."""
    key = _norm(answer)
    normed = [_norm(o) for o in options]
    hits = [LETTERS[i] for i, opt in enumerate(normed) if key and opt == key]
    if hits:
        return hits[0] if len(hits) == 1 else None
    stripped = answer.strip()
    m = _BARE_LETTER.match(stripped)
    if m:
        i = LETTERS.index(m.group(1))
        return m.group(1) if i < len(options) else None
    m = _LETTER_TEXT.match(stripped)
    if m:
        letter = m.group(1) or m.group(2)
        i = LETTERS.index(letter)
        if i < len(options) and normed[i] == _norm(m.group(3)) and normed.count(normed[i]) == 1:
            return letter
    return None


def mc_question(text: str, options: list[str]) -> tuple[str, bool]:
    """The bare question with its options, and whether ``text`` already listed them."""
    question = strip_image_placeholder(text)
    folded = question.casefold()
    if all(opt.strip().casefold() in folded for opt in options):
        return question, True
    return f"{question} options: {', '.join(opt.strip() for opt in options)}", False


def _options(rec: dict[str, Any], path: Path, where: str) -> list[str]:
    options = [get_field(rec, "option_A", (str, int, float), path, where),
               get_field(rec, "option_B", (str, int, float), path, where)]
    for letter in ("C", "D"):
        extra = get_field(rec, f"option_{letter}", (str, int, float), path, where, required=False)
        if extra is None or not str(extra).strip():
            break
        options.append(extra)
    return [str(o) for o in options]


class OmniMedVQA(CaresTask):
    """OmniMedVQA multiple choice (Table 6: 6,155 train / 2,642 test, from the CARES file)."""

    name = "omnimedvqa"
    label = "OmniVQA"
    kind = "vqa"
    version = "2"
    metric_protocol = "mc@difflib"
    section = "§2.6, §2.9"
    dataset_id = "omnimedvqa-cares"
    table6 = {"train": 6155, "test": 2642}
    expected_layout = (
        f"CARES: DIR/{CARES_FILE} (or DIR/CARES/data/OmniMedVQA/{CARES_FILE}) with the OpenGVLab images\n"
        "  in DIR/Images/<dataset>/... or DIR/OmniMedVQA/Images/..., or --image-root RELEASE_DIR (the folder "
        "holding Images/)\n"
        f"or the official release: DIR/{QA_DIR}/{{{','.join(ACCESS_DIRS)}}}/<Dataset>.json and "
        "DIR/Images/<Dataset>/... (DIR = OmniMedVQA/ or its parent; images may be under --image-root)"
    )

    cares_name = CARES_FILE
    cares_dirs = CARES_DIRS

    _layout: tuple[str, Path] | None = None  # resolved by layout(), once per instance

    # -- layout

    def layout(self) -> tuple[str, Path]:
        """``("cares", jsonl file)`` or ``("release", folder holding QA_information/)``; see the module doc."""
        if self._layout is not None:
            return self._layout
        root = self.root()
        cares = [root / d / CARES_FILE for d in CARES_DIRS if (root / d / CARES_FILE).is_file()]
        release = [root / d for d in RELEASE_DIRS if (root / d / QA_DIR).is_dir()]
        if cares:
            self._layout = ("cares", cares[0])
            if release:
                ignored = f"{release[0] / QA_DIR} (official release)"
                self.provenance["ignored"] = ignored
                log.warning("omnimedvqa: both the CARES file %s and the release %s are in the data root; using "
                            "the CARES file (the paper's source). Point --data-root at the release folder alone to "
                            "use the release.", cares[0], ignored)
        elif release:
            self._layout = ("release", release[0])
        else:
            raise self.layout_error(f"neither {CARES_FILE} nor {QA_DIR}/ found under {root}")
        kind = self._layout[0]
        self.dataset_id = f"omnimedvqa-{kind}"
        self.provenance["layout"] = "cares-jsonl" if kind == "cares" else "omnimedvqa-release"
        self.provenance["source"] = str(self._layout[1])
        return self._layout

    def cares_file(self) -> Path:
        kind, path = self.layout()
        if kind != "cares":
            raise self.layout_error(f"{CARES_FILE} not found")
        return path

    def images_dir(self) -> Path:
        """The folder that holds ``Images/`` (record paths start with ``Images/``)."""
        if self.image_root is not None:
            root = self.checked_image_root()
            for cand in (root, root / "OmniMedVQA", root.parent):
                if (cand / "Images").is_dir():
                    return cand
            raise self.layout_error(f"image root {root} has no Images/ folder (nor OmniMedVQA/Images/)")
        kind, path = self.layout()
        if kind == "release" and (path / "Images").is_dir():
            return path
        return self.find_dir("", "OmniMedVQA", marker="Images")

    def release_files(self) -> list[Path]:
        """Every ``QA_information/<access>/<Dataset>.json``, noting a missing access folder."""
        _, base = self.layout()
        files, missing = [], []
        for access in ACCESS_DIRS:
            folder = base / QA_DIR / access
            if folder.is_dir():
                files.extend(sorted(folder.glob("*.json")))
            else:
                missing.append(f"{QA_DIR}/{access}")
        if missing:
            self.provenance["missing"] = missing
            if len(missing) < len(ACCESS_DIRS):
                log.warning("omnimedvqa: %s missing under %s; loading the other access folder only",
                            ", ".join(missing), base)
        if not files:
            raise self.layout_error(f"no <Dataset>.json files under {base / QA_DIR}/{{{','.join(ACCESS_DIRS)}}}")
        return files

    def source_files(self) -> list[Path]:
        kind, path = self.layout()
        return [path] if kind == "cares" else self.release_files()

    # -- rows

    def read_rows(self) -> list[Row]:
        kind, _ = self.layout()
        if kind == "release":
            self.release_files()  # a release without question files is refused before its images are looked for
        images = self.images_dir()
        rows = self._cares_rows(images) if kind == "cares" else self._release_rows(images)
        gold = Counter(r.sample.meta["gold_rule"] for r in rows if r.sample is not None and r.skip is None)
        self.provenance.update(rows=len(rows), gold_rules=dict(sorted(gold.items())),
                               options_with_comma=sum(1 for r in rows if r.sample is not None and
                                                      any("," in o for o in r.sample.meta["options"])))
        return rows

    def _row(self, rid: str, rec: dict[str, Any], text: str, answer: str, image: str, dataset: str,
             options: list[str], images: Path, extra: dict[str, Any]) -> Row:
        question, listed = mc_question(text, options)
        gold = mc_gold(answer, options)
        skip = None
        if not answer.strip():
            skip = "empty-answer"
        elif gold is None:
            skip = f"mc-no-gold: answer {answer[:60]!r} maps to no single option"
        label = options[LETTERS.index(gold)] if gold else answer
        rule = None
        if gold:
            rule = "text" if _norm(answer) == _norm(label) else "letter"
        sample = Sample(
            id=rid, image_path=image, question=question, answer=label, answer_type=AnswerType.MC, split="",
            meta={"dataset": "omnimedvqa", "source_dataset": dataset, "answer_format": "MC", "options": options,
                  "gold": gold, "gold_rule": rule, "answer_original": answer, "lang": "en",
                  "options_in_text": listed, **extra, "source": rec},
        )
        return Row(rid, image, dataset, check_hash(image, question), sample, images, skip=skip)

    def _malformed(self, rid: str, exc: RecordError) -> Row:
        if self.strict:
            raise MalformedDataError(str(exc)) from exc
        return Row(rid, rid, "", "", None, None, skip=f"malformed: {exc}")

    def _cares_rows(self, images: Path) -> list[Row]:
        path = self.cares_file()
        rows: list[Row] = []
        keys: Counter = Counter()
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
                options = _options(rec, path, where)
            except RecordError as exc:
                rows.append(self._malformed(rid, exc))
                continue
            rows.append(self._row(rid, rec, text, answer, image, dataset, options, images, {}))
        self.provenance["keys"] = dict(keys)
        return rows

    def _release_rows(self, images: Path) -> list[Row]:
        rows: list[Row] = []
        keys: Counter = Counter()
        per_access: Counter = Counter()
        seen: Counter = Counter()
        _, base = self.layout()
        for path in self.release_files():
            access = path.parent.name
            data = read_json(path)
            if not isinstance(data, list):
                raise MalformedDataError(f"{path}: expected a JSON list of question records")
            for i, rec in enumerate(data):
                where = f"[{i}]"
                rid = f"omnimedvqa-{path.stem}-{i}"
                try:
                    qid = str(get_field(rec, "question_id", (str, int), path, where))
                    rid = f"omnimedvqa-{qid}"
                    keys.update(rec.keys())
                    text = get_field(rec, "question", str, path, where)
                    answer = str(get_field(rec, "gt_answer", (str, int, float), path, where))
                    image = get_field(rec, "image_path", str, path, where)
                    dataset = str(get_field(rec, "dataset", (str, int), path, where, required=False, default=path.stem))
                    options = _options(rec, path, where)
                except RecordError as exc:
                    rows.append(self._malformed(f"{rid}@{path.stem}[{i}]" if seen[rid] else rid, exc))
                    seen[rid] += 1
                    continue
                seen[rid] += 1
                per_access[access] += 1
                if seen[rid] > 1:
                    rows.append(Row(f"{rid}#{seen[rid]}", f"{rid}#{seen[rid]}", dataset, "", None, None,
                                    skip=f"duplicate-id: question_id {qid} again in {path.name}[{i}]"))
                    continue
                extra = {"access": access, "modality": rec.get("modality_type"),
                         "question_type": rec.get("question_type"), "file": f"{access}/{path.name}"}
                rows.append(self._row(rid, rec, text, answer, image, dataset, options, images, extra))
        self.provenance.update(keys=dict(keys), rows_per_access=dict(per_access))
        return rows
