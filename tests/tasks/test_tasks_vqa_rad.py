"""VQA-RAD loader: the phrase_type split rule, qid normalisation, answer_type stripping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, run_tiny, write_vqa_rad

from medbench.backbones.templates import TINY
from medbench.task import DataRootError
from medbench.tasks._common import MalformedDataError
from medbench.tasks.vqa_rad import VQARAD
from medbench.types import AnswerType


def test_split_rule_and_fields(tmp_path: Path) -> None:
    task = VQARAD(write_vqa_rad(tmp_path))
    train, test = task.load("train"), task.load("test")
    assert [s.id for s in train] == ["vqarad-0", "vqarad-1", "vqarad-4"]
    assert [s.id for s in test] == ["vqarad-2", "vqarad-3"]
    assert {s.meta["phrase_type"] for s in train} == {"freeform", "para"}
    assert {s.meta["phrase_type"] for s in test} == {"test_freeform", "test_para"}
    by_id = {s.id: s for s in train + test}
    assert by_id["vqarad-1"].answer_type is AnswerType.CLOSED  # "CLOSED " with a trailing space
    assert by_id["vqarad-2"].answer_type is AnswerType.OPEN
    assert by_id["vqarad-4"].answer == "2"
    assert by_id["vqarad-3"].image_path.endswith("VQA_RAD Image Folder/synpic100.jpg")
    assert by_id["vqarad-0"].meta["organ"] == "HEAD"
    assert task.count_checks["train"]["table6"] == 1797 and task.count_checks["test"]["table6"] == 451


def test_malformed_records(tmp_path: Path) -> None:
    root = write_vqa_rad(tmp_path)
    path = root / "VQA_RAD Dataset Public.json"
    records = json.loads(path.read_text())
    records[2]["answer_type"] = "MAYBE"
    records[3]["image_name"] = "../secret.jpg"
    records.append(dict(records[0], qid=7, phrase_type="test_para", image_name="synpic999.jpg"))
    path.write_text(json.dumps(records))
    task = VQARAD(root)
    assert task.load("test") == []
    reasons = {s.id: s.reason for s in task.skipped}
    assert "record 2 field 'answer_type'" in reasons["vqarad-2"]
    assert reasons["vqarad-3"].startswith("unsafe-path")
    assert reasons["vqarad-7"] == "image-missing: synpic999.jpg"
    with pytest.raises(MalformedDataError, match="field 'answer_type'"):
        VQARAD(root, strict=True).load("test")
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(MalformedDataError, match="expected a JSON list"):
        VQARAD(root).load("train")


def test_missing_images_folder(tmp_path: Path) -> None:
    (tmp_path / "VQA_RAD Dataset Public.json").write_text("[]")
    with pytest.raises(DataRootError, match="VQA_RAD Image Folder"):
        VQARAD(tmp_path).load("test")


def test_golden_prompt(tmp_path: Path) -> None:
    sample = VQARAD(write_vqa_rad(tmp_path)).load("test")[0]
    assert TINY.render(sample.question, "<image>") == "USER: <image>\nWhat organ is shown? ASSISTANT:"


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
def test_end_to_end(tmp_path: Path) -> None:
    results = run_tiny("vqa-rad", write_vqa_rad(tmp_path / "data"), tmp_path / "runs")
    assert results["task"] == "vqa-rad"
