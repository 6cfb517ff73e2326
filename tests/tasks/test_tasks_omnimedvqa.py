"""OmniMedVQA loader: 2- and 4-option MC, gold letters, split grouped by image and stratified by dataset."""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, omni_record, run_tiny, write_omnimedvqa, write_omnimedvqa_release

from medbench.backbones.templates import TINY
from medbench.cli import main
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


@pytest.mark.parametrize("answer,gold", [
    ("Dermoscopy.", "A"), ("dermoscopy!", "A"), (" Endoscopy ", "B"),  # text, trailing punctuation, case
    ("B", "B"), ("(C)", "C"), ("B.", "B"),  # a bare letter
    ("C:Ultrasound", "C"), ("B: Endoscopy", "B"), ("(A) Dermoscopy", "A"), ("A. dermoscopy.", "A"),  # letter:text
    ("D", None), ("D:Heart", None),  # no option D
    ("A:Endoscopy", None),  # the letter and the text disagree
    ("Ultra", None), ("", None), ("Dermoscopy, Endoscopy", None),
])
def test_answer_rule(answer: str, gold: str | None) -> None:
    assert mc_gold(answer, ["Dermoscopy", "Endoscopy", "Ultrasound"]) == gold


def test_answer_rule_text_before_letter() -> None:
    """An option whose text is a letter is matched as text first (rule 1), then as a letter."""
    assert mc_gold("A", ["B", "A"]) == "B"
    assert mc_gold("b", ["yes", "no"]) is None  # only upper-case letters are letters
    assert mc_gold("B:No", ["Yes", "No"]) == "B"  # how CARES writes some answers
    assert mc_gold("No, It's normal.", ["No, It's normal.", "Yes, It's glaucoma."]) == "A"


def test_fields_and_split(tmp_path: Path) -> None:
    task = OmniMedVQA(write_omnimedvqa(tmp_path))
    train, test = task.load("train"), task.load("test")
    assert len(train) + len(test) == 7
    sample = next(s for s in train + test if s.id == "omnimedvqa-L00000")
    assert sample.answer == "Fundus photography" and sample.answer_type is AnswerType.MC
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
    assert task.provenance["layout"] == "cares-jsonl" and task.dataset_id == "omnimedvqa-cares"


RELEASE_GOLD = {"omnimedvqa-ACRIMA_0000": ("D", "Fundus photography"), "omnimedvqa-ACRIMA_0001": ("A", "No, It's normal."),
                "omnimedvqa-ACRIMA_0002": ("A", "Dermoscopy"), "omnimedvqa-ACRIMA_0003": ("B", "Right"),
                "omnimedvqa-ThyroidUS_0000": ("C", "Thyroid"), "omnimedvqa-ThyroidUS_0001": ("A", "yes"),
                "omnimedvqa-AIDA_0000": ("A", "Colon, sigmoid")}


def test_official_release(tmp_path: Path) -> None:
    base = write_omnimedvqa_release(tmp_path)
    task = OmniMedVQA(base)
    samples = task.load("train") + task.load("test")
    assert {s.id: (s.meta["gold"], s.answer) for s in samples} == RELEASE_GOLD
    by_id = {s.id: s for s in samples}
    thyroid = by_id["omnimedvqa-ThyroidUS_0000"]
    assert thyroid.answer_type is AnswerType.MC and thyroid.meta["answer_original"] == "C:Thyroid"
    assert thyroid.meta["options"] == ["Liver", "Kidney", "Thyroid", "Heart"]
    assert thyroid.meta["access"] == "Open-access" and thyroid.meta["modality"] == "Fundus Photography"
    assert thyroid.image_path == str(base / "Images" / "Thyroid US" / "t1.jpg")
    comma = by_id["omnimedvqa-AIDA_0000"]
    assert comma.meta["options"] == ["Colon, sigmoid", "Stomach"]  # a list, never re-split on ", "
    assert comma.question == "What organ? options: Colon, sigmoid, Stomach"
    reasons = {s.id: s.reason.split(":")[0] for s in task.skipped}
    assert reasons == {"omnimedvqa-ThyroidUS_0002": "mc-no-gold", "omnimedvqa-ThyroidUS_0003": "mc-no-gold",
                       "omnimedvqa-ThyroidUS_0001#2": "duplicate-id", "omnimedvqa-AIDA_0001": "image-missing"}
    assert task.provenance["layout"] == "omnimedvqa-release" and task.dataset_id == "omnimedvqa-release"
    assert task.provenance["rows_per_access"] == {"Open-access": 9, "Restricted-access": 2}
    assert task.provenance["gold_rules"] == {"letter": 3, "text": 5}  # AIDA_0001 maps, then lacks its image
    assert "missing" not in task.provenance
    rows = sum(c["rows"] for c in task.count_checks.values())
    assert rows == 11 and sum(c["unscorable"] for c in task.count_checks.values()) == 2
    assignment = task.assignment()
    assert assignment["omnimedvqa-ACRIMA_0002"] == assignment["omnimedvqa-ACRIMA_0003"]  # same image
    assert OmniMedVQA(tmp_path).load("test") == task.load("test")  # DIR may be OmniMedVQA/'s parent
    manifest = task.build_manifest()
    assert manifest["dataset_id"] == "omnimedvqa-release" and len(manifest["source_files"]) == 3


def test_release_missing_access_folder(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="medbench.tasks")
    task = OmniMedVQA(write_omnimedvqa_release(tmp_path, access=("Open-access",)))
    samples = task.load("train") + task.load("test")
    assert len(samples) == 6 and all(s.meta["access"] == "Open-access" for s in samples)
    assert task.provenance["missing"] == ["QA_information/Restricted-access"]
    assert "QA_information/Restricted-access missing" in caplog.text
    empty = tmp_path / "empty"
    (empty / "QA_information").mkdir(parents=True)
    with pytest.raises(DataRootError, match="no <Dataset>.json files"):
        OmniMedVQA(empty).load("test")


def test_both_layouts_use_cares(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="medbench.tasks")
    root = write_omnimedvqa(tmp_path)
    (root / "QA_information" / "Open-access").mkdir(parents=True)
    task = OmniMedVQA(root)
    assert len(task.load("train") + task.load("test")) == 7
    assert task.provenance["layout"] == "cares-jsonl" and "official release" in task.provenance["ignored"]
    assert "using the CARES file" in caplog.text


def test_image_root_and_data_check(tmp_path: Path, capsys) -> None:
    """The CARES file in one folder, the OmniMedVQA release (with Images/) in another."""
    release = write_omnimedvqa(tmp_path / "release")
    cares = tmp_path / "cares"
    cares.mkdir()
    (release / "omnimedvqa_factuality.jsonl").rename(cares / "omnimedvqa_factuality.jsonl")
    with pytest.raises(DataRootError, match="Images"):
        OmniMedVQA(cares).load("test")
    task = OmniMedVQA(cares, image_root=release)
    assert len(task.load("train") + task.load("test")) == 7
    assert task.load("test")[0].image_path.startswith(str(release / "Images"))
    assert main(["data", "check", "--task", "omnimedvqa", "--data-root", str(cares), "--image-root", str(release),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_root"] == str(release)
    assert sum(c["rows"] for c in out["splits"].values()) == 8
    assert sum(c["n"] for c in out["splits"].values()) == sum(c["mc"] for c in out["splits"].values()) == 7
    assert all(c["closed"] == 0 for c in out["splits"].values())
    with pytest.raises(DataRootError, match="no Images/ folder"):
        OmniMedVQA(cares, image_root=cares).load("test")
    rel = write_omnimedvqa_release(tmp_path / "r")
    assert main(["data", "check", "--task", "omnimedvqa", "--data-root", str(rel), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: sum(c[k] for c in out["splits"].values()) for k in ("rows", "n", "unscorable", "mc")} == {
        "rows": 11, "n": 7, "unscorable": 2, "mc": 7}


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
    assert (counts["planned"], counts["scored"], counts["mc"]) == (len(test_ids),) * 3
    assert "closed" not in counts  # multiple-choice questions are counted as mc, not as closed
    assert {r["answer_type"] for r in rows} == {"mc"}
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
