"""MIMIC-CXR-JPG loader: frontal view choice, report sources, short-target filter, hash-order sample."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, run_tiny, write_mimic

from medbench.backbones.templates import TINY
from medbench.task import DataRootError
from medbench.tasks._common import MalformedDataError
from medbench.tasks.mimic_cxr import MIMICCXRReport, parse_sections
from medbench.types import AnswerType


def test_parse_sections() -> None:
    text = ("FINAL REPORT\n EXAMINATION: CHEST\n\n INDICATION: cough\n\n FINDINGS: Lungs are\n clear.\n\n"
            " IMPRESSION: No acute process.\n")
    assert parse_sections(text) == ("Lungs are clear.", "No acute process.")
    assert parse_sections("IMPRESSION: Normal.") == ("", "Normal.")


@pytest.mark.parametrize("reports", ["sectioned", "zip", "files"])
def test_sample(tmp_path: Path, reports: str) -> None:
    task = MIMICCXRReport(write_mimic(tmp_path, reports=reports))
    train, test = task.load("train"), task.load("test")
    assert [s.id for s in train] == ["mimic-s50000001", "mimic-s50000002"]
    assert [s.id for s in test] == ["mimic-s50000004", "mimic-s50000007"]
    first = train[0]
    assert first.image_path.endswith("files/p10/p10000001/s50000001/d1.jpg")  # PA, lowest dicom_id
    assert first.answer.startswith("The lungs are clear") and first.answer.endswith("No acute process.")
    assert first.answer_type is AnswerType.REPORT
    assert train[1].meta["dicom_id"] == "d4" and train[1].answer.startswith("Stable moderate")
    expected_source = "mimic_cxr_sectioned" if reports == "sectioned" else "medbench-parser"
    assert first.meta["section_source"] == expected_source
    reasons = {s.id: s.reason for s in task.skipped}
    assert reasons == {"mimic-s50000005": "short-target: 1 tokens (minimum 10)", "mimic-s50000006": "report-missing"}
    assert task.provenance["filtered"] == {"train: no frontal image": 1}


def test_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DataRootError, match="mimic-cxr-2.0.0-split.csv"):
        MIMICCXRReport(tmp_path).load("test")
    root = write_mimic(tmp_path)
    import gzip

    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        fh.write("dicom_id,subject_id\nd1,1\n")
    with pytest.raises(MalformedDataError, match="record 0 field 'ViewPosition'"):
        MIMICCXRReport(root).load("test")


def test_golden_prompt(tmp_path: Path) -> None:
    sample = MIMICCXRReport(write_mimic(tmp_path)).load("test")[0]
    assert TINY.render(sample.question, "<image>") == (
        "USER: <image>\nAnalyze the chest X-ray and generate a concise medical report. ASSISTANT:")


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
def test_end_to_end(tmp_path: Path) -> None:
    results = run_tiny("mimic-cxr-report", write_mimic(tmp_path / "data"), tmp_path / "runs")
    assert results["task"] == "mimic-cxr-report"
