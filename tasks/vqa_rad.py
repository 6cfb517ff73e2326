"""VQA-RAD (OSF release), official split by ``phrase_type`` (spec §2.3).

Layout: ``DIR/VQA_RAD Dataset Public.json`` (a JSON list of 2,248 records) and
``DIR/VQA_RAD Image Folder/synpic<N>.jpg``. Test = ``phrase_type`` in {``test_freeform``,
``test_para``} (451 rows); train = every other row (1,797). Ids are ``vqarad-<str(qid)>``;
OPEN/CLOSED is ``answer_type.strip().upper()``. The HF copy (no ``answer_type``) is not supported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from medbench.tasks._common import MalformedDataError, RealTask, RecordError, get_field, read_json
from medbench.types import AnswerType, Sample

JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_DIR = "VQA_RAD Image Folder"
TEST_PHRASE_TYPES = ("test_freeform", "test_para")


class VQARAD(RealTask):
    """VQA-RAD radiology VQA (Table 6: 1,797 train / 451 test)."""

    name = "vqa-rad"
    label = "VQA-RAD"
    kind = "vqa"
    version = "1"
    metric_protocol = "llava_med"
    splits = ("train", "test")
    section = "§2.3"
    table6 = {"train": 1797, "test": 451}
    expected_layout = f"DIR/{JSON_NAME}\nDIR/{IMAGE_DIR}/synpic<N>.jpg"

    def base(self) -> Path:
        base = self.find_dir("", marker=JSON_NAME)
        self.require(base / IMAGE_DIR)
        return base

    def _load(self, split: str) -> Iterable[Sample]:
        base = self.base()
        path = base / JSON_NAME
        records = read_json(path)
        if not isinstance(records, list):
            raise MalformedDataError(f"{path}: expected a JSON list of question records")
        phrase_types: Counter = Counter()
        images: set[str] = set()
        for i, rec in enumerate(records):
            rid = f"vqarad-record{i}"
            try:
                qid = str(get_field(rec, "qid", (str, int), path, i))
                rid = f"vqarad-{qid}"
                phrase = get_field(rec, "phrase_type", str, path, qid)
                if ("test" if phrase in TEST_PHRASE_TYPES else "train") != split:
                    continue
                question = get_field(rec, "question", str, path, qid)
                answer = str(get_field(rec, "answer", (str, int, float), path, qid))
                image_name = get_field(rec, "image_name", str, path, qid)
                kind = get_field(rec, "answer_type", str, path, qid).strip().upper()
                if kind not in ("OPEN", "CLOSED"):
                    raise RecordError(path, qid, "answer_type", f"expected OPEN or CLOSED, got {kind!r}")
            except RecordError as exc:
                self.bad_record(rid, exc)
                continue
            phrase_types[phrase] += 1
            if not answer.strip():
                self.skip(rid, "empty-answer")
                continue
            image = self.image_path(rid, base / IMAGE_DIR, image_name)
            if image is None:
                continue
            images.add(image_name)
            yield Sample(
                id=rid, image_path=str(image), question=question.strip(), answer=answer,
                answer_type=AnswerType(kind.lower()), split=split,
                meta={"dataset": "vqa-rad", "gold": answer, "lang": "en", "organ": rec.get("image_organ"),
                      "question_type": rec.get("question_type"), "phrase_type": phrase, "source": rec},
            )
        self.provenance.setdefault("phrase_types", {})[split] = dict(phrase_types)
        self.provenance.setdefault("images", {})[split] = len(images)
