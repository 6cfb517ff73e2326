"""OmniMedVQA loader: 2- and 4-option MC, gold letters, split grouped by image and stratified by dataset."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, omni_record, run_tiny, write_omnimedvqa

from medbench.backbones.templates import TINY
from medbench.predictions import read_rows
from medbench.task import DataRootError
from medbench.tasks.omnimedvqa import OmniMedVQA, mc_gold, mc_question
from medbench.types import AnswerType


def test_mc_helpers() -> None:
    assert mc_gold(" fundus Photography ", ["CT", "Fundus photography"]) == "B"
    assert mc_gold("both", ["left", "right"]) is None
    assert mc_gold("yes", ["yes", "Yes"]) is None  # not unique
    assert mc_question("Which?\n<image>", ["a", "b"]) == ("Which? options: a, b", False)
    assert mc_question("Which? A: left, B: right", ["left", "right"]) == ("Which? A: left, B: right", True)


def test_fields_and_split(tmp_path: Path) -> None:
    task = OmniMedVQA(write_omnimedvqa(tmp_path))
    train, test = task.load("train"), task.load("test")
    assert len(train) + len(test) == 7
    sample = next(s for s in train + test if s.id == "omnimedvqa-L00000")
    assert sample.answer == "Fundus photography" and sample.answer_type is AnswerType.CLOSED
    assert sample.meta["options"] == ["CT", "MRI", "X-ray", "Fundus photography"] and sample.meta["gold"] == "D"
    assert sample.meta["answer_format"] == "MC" and sample.meta["source_dataset"] == "Adam Challenge"
    assert sample.image_path.endswith("Images/Adam Challenge/AMD/A0000.jpg")
    two = next(s for s in train + test if s.id == "omnimedvqa-L00004")
    assert two.meta["options"] == ["yes", "no"] and two.meta["gold"] == "A"
    assert [(s.id, s.reason.split(":")[0]) for s in task.skipped] == [("omnimedvqa-L00007", "mc-no-gold")]
    assignment = task.assignment()
    assert assignment["omnimedvqa-L00004"] == assignment["omnimedvqa-L00007"]  # same image
    for dataset in ("Adam Challenge", "Chest CT Scan"):
        assert any(s.meta["source_dataset"] == dataset for s in test)
    assert task.metric_protocol == "mc@difflib"
    assert set(task.provenance["keys"]) >= {"question_id", "dataset", "image", "text", "answer", "option_A"}


def test_malformed_and_missing(tmp_path: Path) -> None:
    root = write_omnimedvqa(tmp_path)
    rec = omni_record(99, "X", "Images/X/none.jpg", "Q?", "a", ["a", "b"])
    del rec["option_B"]
    with open(root / "omnimedvqa_factuality.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.write(json.dumps(omni_record(98, "X", "Images/X/none.jpg", "Q?", "a", ["a", "b"])) + "\n")
    task = OmniMedVQA(root)
    task.load("train"), task.load("test")
    reasons = {s.id: s.reason for s in task.skipped}
    assert "line 8 field 'option_B': missing" in reasons["omnimedvqa-L00008"]
    assert reasons["omnimedvqa-L00009"] == "image-missing: Images/X/none.jpg"
    (root / "Images").rename(root / "Elsewhere")
    with pytest.raises(DataRootError, match="Images"):
        OmniMedVQA(root).load("test")


def test_golden_prompt(tmp_path: Path) -> None:
    sample = OmniMedVQA(write_omnimedvqa(tmp_path)).load("test")[0]
    assert sample.id == "omnimedvqa-L00000"
    assert TINY.render(sample.question, "<image>") == (
        "USER: <image>\nWhat modality is used? options: CT, MRI, X-ray, Fundus photography ASSISTANT:")


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
def test_end_to_end(tmp_path: Path) -> None:
    data = write_omnimedvqa(tmp_path / "data")
    results = run_tiny("omnimedvqa", data, tmp_path / "runs")
    assert results["task"] == "omnimedvqa" and results["metric_protocol"] == "mc@difflib"
    task = OmniMedVQA(data)
    test_ids = sorted(s.id for s in task.load("test"))
    assert not set(test_ids) & {s.id for s in task.load("train")}
    run = Path(results["run_dir"])
    _, rows = read_rows(run / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == test_ids
    counts = results["counts"]
    assert (counts["planned"], counts["scored"], counts["closed"]) == (len(test_ids),) * 3
    options = {"omnimedvqa-L00000": ["CT", "MRI", "X-ray", "Fundus photography"],
               "omnimedvqa-L00005": ["yes", "no"]}
    assert set(options) == set(test_ids)
    expected = {r["id"]: hit(r["prediction"], r["answer"], options[r["id"]]) for r in rows}
    per_sample = json.loads((run / "per_sample.json").read_text())["closed_accuracy"]
    assert per_sample == expected
    assert results["metrics"]["closed_accuracy"] == pytest.approx(sum(expected.values()) / len(expected))


def hit(prediction: str, answer: str, options: list[str]) -> float:
    """1.0 when the prediction and the answer map to the same option (a prediction mapping to none misses)."""
    chosen = closest(prediction, options)
    return float(chosen is not None and chosen == closest(answer, options))


def closest(text: str, options: list[str]) -> int | None:
    """The option most similar to ``text`` by difflib's ratio (option first), first on ties, None if all 0."""
    ratios = [difflib.SequenceMatcher(None, option, text).ratio() for option in options]
    return None if max(ratios) == 0 else ratios.index(max(ratios))
