"""IU-Xray: CARES yes/no VQA (gold parsing, skips, grouped split) and R2Gen report generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_datasets import CARES_ROWS, TINY_WEIGHTS, run_tiny, write_cares_iuxray, write_r2gen

from medbench.backbones.templates import TINY
from medbench.cli import main
from medbench.task import DataRootError
from medbench.tasks._common import MalformedDataError
from medbench.tasks.iu_xray import REPORT_INSTRUCTION, IUXrayReport, IUXrayVQA
from medbench.types import AnswerType


def test_cares_vqa_fields_and_gold(tmp_path: Path) -> None:
    task = IUXrayVQA(write_cares_iuxray(tmp_path))
    samples = task.load("train") + task.load("test")
    assert len(samples) == 10
    by_id = {s.id: s for s in samples}
    first = by_id["iuxray-cares-L00000"]
    assert first.question == "Is the heart size normal? Please choose from the following two options: [yes, no]"
    assert first.answer == "yes" and first.meta["answer_original"] == "Yes."
    assert first.answer_type is AnswerType.CLOSED
    assert first.image_path.endswith("iu_xray/images/CXR1_IM-0001/0.png")
    assert by_id["iuxray-cares-L00002"].answer == "no"  # "No (the lungs are clear)."
    assert by_id["iuxray-cares-L00008"].answer == "yes"
    reasons = {s.id: s.reason for s in task.skipped}
    assert reasons["iuxray-cares-L00005"] == "empty-answer"
    assert reasons["iuxray-cares-L00004"].startswith("hedged-answer")
    assert task.provenance["r2gen_train_overlap"] == {"images": 5, "in_r2gen_train": 2}


def test_cares_split_grouped_by_image(tmp_path: Path) -> None:
    task = IUXrayVQA(write_cares_iuxray(tmp_path))
    assignment = task.assignment()
    assert len(assignment) == len(CARES_ROWS)
    for image in {row[0] for row in CARES_ROWS}:
        splits = {assignment[f"iuxray-cares-L{i:05d}"] for i, row in enumerate(CARES_ROWS) if row[0] == image}
        assert len(splits) == 1
    assert sum(v == "test" for v in assignment.values()) >= round(0.3 * len(CARES_ROWS))
    assert IUXrayVQA(tmp_path).assignment() == assignment
    assert task.provenance["split_source"] == "computed"
    assert task.count_checks == {} or all(c["derived"] for c in task.count_checks.values())


def test_cares_malformed_and_images_root(tmp_path: Path) -> None:
    root = write_cares_iuxray(tmp_path / "a")
    with open(root / "iuxray_factuality.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"question": "Q? [yes, no]\\n<image>", "answer": "Yes."}\n{not json\n')
    task = IUXrayVQA(root)
    task.load("train"), task.load("test")
    reasons = {s.id: s.reason for s in task.skipped}
    assert "line 12 field 'image': missing" in reasons["iuxray-cares-L00012"]
    assert "not valid JSON" in reasons["iuxray-cares-L00013"]
    with pytest.raises(MalformedDataError, match="line 12 field 'image'"):
        IUXrayVQA(root, strict=True).load("test")
    other = tmp_path / "b"
    other.mkdir()
    (other / "iuxray_factuality.jsonl").write_bytes((root / "iuxray_factuality.jsonl").read_bytes())
    with pytest.raises(DataRootError, match="images"):
        IUXrayVQA(other).load("test")
    expected = [(s.id, Path(s.image_path).relative_to(root / "iu_xray" / "images")) for s in IUXrayVQA(root).load("test")]
    for image_root in (root / "iu_xray" / "images", root / "iu_xray", root):  # images/, R2Gen's iu_xray/, its parent
        task = IUXrayVQA(other, image_root=image_root)
        got = [(s.id, Path(s.image_path).relative_to(root / "iu_xray" / "images")) for s in task.load("test")]
        assert got == expected and task.provenance["image_root"] == str(image_root)
    with pytest.raises(DataRootError, match="image root .* does not exist"):
        IUXrayVQA(other, image_root=tmp_path / "nowhere").load("test")


def test_cares_data_check_rows_and_scorable(tmp_path: Path, capsys) -> None:
    """Unscorable rows (empty, hedged) stay in their split: rows vs scorable in `data check`, both roots."""
    root = write_cares_iuxray(tmp_path / "r2gen")
    cares = tmp_path / "cares"
    cares.mkdir()
    (root / "iuxray_factuality.jsonl").rename(cares / "iuxray_factuality.jsonl")
    argv = ["data", "check", "--task", "iu-xray-vqa", "--data-root", str(cares), "--image-root", str(root / "iu_xray")]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data_root"] == str(cares) and out["image_root"] == str(root / "iu_xray")
    splits = out["splits"]
    assert sum(c["rows"] for c in splits.values()) == len(CARES_ROWS) == 12
    assert sum(c["n"] for c in splits.values()) == sum(c["closed"] for c in splits.values()) == 10
    assert sum(c["unscorable"] for c in splits.values()) == 2
    task = IUXrayVQA(cares, image_root=root / "iu_xray")
    assignment = task.assignment()
    for split, c in splits.items():
        assert c["rows"] == sum(v == split for v in assignment.values())
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"image root: {root / 'iu_xray'}" in text and "unscorable rows" in text
    assert main(["data", "check", "--task", "iu-xray-report", "--data-root", str(root), "--image-root", str(root)]) == 1
    assert "reads its images from its data root" in capsys.readouterr().err


def test_r2gen_reports(tmp_path: Path) -> None:
    task = IUXrayReport(write_r2gen(tmp_path))
    train = task.load("train")
    assert [s.id for s in train] == ["iuxray-report-CXR1_IM-0001", "iuxray-report-CXR2_IM-0002"]
    assert train[0].answer == "The heart is normal. The lungs are clear. No XXXX."
    assert train[0].question == REPORT_INSTRUCTION and train[0].answer_type is AnswerType.REPORT
    assert train[0].image_path.endswith("iu_xray/images/CXR1_IM-0001/0.png")
    assert len(task.load("val")) == 1 and len(task.load("test")) == 2
    assert task.count_checks["test"]["table6"] == 590


def test_r2gen_malformed(tmp_path: Path) -> None:
    root = write_r2gen(tmp_path)
    path = root / "iu_xray" / "annotation.json"
    ann = json.loads(path.read_text())
    ann["test"][0]["image_path"] = []
    ann["test"][1]["report"] = " "
    path.write_text(json.dumps(ann))
    task = IUXrayReport(root)
    assert task.load("test") == []
    reasons = {s.id: s.reason for s in task.skipped}
    assert "field 'image_path'" in reasons["iuxray-report-CXR4_IM-0004"]
    assert reasons["iuxray-report-CXR5_IM-0005"] == "empty-answer"
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(MalformedDataError, match="under 'test'"):
        IUXrayReport(root).load("test")


def test_golden_prompts(tmp_path: Path) -> None:
    vqa = IUXrayVQA(write_cares_iuxray(tmp_path)).load("test")[0]
    assert vqa.id == "iuxray-cares-L00006"
    assert TINY.render(vqa.question, "<image>") == (
        "USER: <image>\nAre the lungs clear? Please choose from the following two options: [yes, no] ASSISTANT:")
    report = IUXrayReport(tmp_path).load("test")[0]
    assert TINY.render(report.question, "<image>") == (
        "USER: <image>\nAnalyze the chest X-ray and generate a concise medical report. ASSISTANT:")


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
@pytest.mark.parametrize("task", ["iu-xray-vqa", "iu-xray-report"])
def test_end_to_end(tmp_path: Path, task: str) -> None:
    results = run_tiny(task, write_cares_iuxray(tmp_path / "data"), tmp_path / "runs")
    assert results["task"] == task
