"""MIMIC-CXR loader: MIT-LCP heading normalisation, the three report sources agreeing record for record,
their priority when mixed, a separate image root, the R2Gen layout and its provenance."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fixtures_datasets import (
    LONG_FINDINGS,
    MIMIC_REPORTS,
    TINY_WEIGHTS,
    run_tiny,
    write_mimic,
    write_mimic_r2gen,
)

from medbench.backbones.templates import TINY
from medbench.cli import main
from medbench.task import DataRootError
from medbench.tasks._common import MalformedDataError
from medbench.tasks.mimic_cxr import MIMICCXRReport, normalise_heading, parse_sections, section_report
from medbench.types import AnswerType

SOURCES = ["sectioned", "zip", "files"]


def test_parse_sections() -> None:
    text = ("FINAL REPORT\n EXAMINATION: CHEST\n\n INDICATION: cough\n\n FINDINGS: Lungs are\n clear.\n\n"
            " IMPRESSION: No acute process.\n")
    assert parse_sections(text) == ("Lungs are clear.", "No acute process.")
    # MIT-LCP's headings start a line after a newline and a space: a report's first word is preamble
    assert parse_sections("IMPRESSION: Normal.") == ("", "")
    assert parse_sections("FINAL REPORT\n IMPRESSION: Normal.") == ("", "Normal.")
    for heading in ("FINDINGS AND IMPRESSION", "CONCLUSION", "IMPRESSIONS", "FINDINGS/IMPRESSION", "IMPRESSON",
                    "FINDINGS/ IMPRESSION"):
        assert parse_sections(f"X\n {heading}: Small effusion.\n") == ("", "Small effusion."), heading
    for heading in ("CHEST, TWO VIEWS", "PA AND LATERAL VIEWS OF THE CHEST", "PORTABLE AP", "FINDING", "FINIDNGS"):
        assert parse_sections(f"X\n {heading}: Clear lungs.\n") == ("Clear lungs.", ""), heading
    # an empty FINDINGS is dropped, the last non-empty one is kept; "NOTE:" inside a line is no heading
    text = "X\n FINDINGS:\n \n FINDINGS: A. NOTE: b.\n \n IMPRESSION: C.\n \n IMPRESSION: D.\n"
    assert parse_sections(text) == ("A. NOTE: b.", "D.")
    assert parse_sections("X\n FINDINGS: A.\n IMPRESSION: B.\n \n FINDINGS:\n \n") == ("A.", "B.")
    assert parse_sections("X\n FINDINGS:\n IMPRESSION: B.\n") == ("IMPRESSION: B.", "")  # as MIT-LCP reads it
    assert section_report("X\n WET READ: fine\n\n COMPARISON: none\n")["wet read"] == "fine"
    assert normalise_heading(" Clinical History ") == "history" and normalise_heading("NDICATION") == "impression"
    assert normalise_heading("SOMETHING ELSE") == "something else"


def test_fixture_reports_section_as_mit_lcp_writes_them() -> None:
    """The fixture's sectioned CSV rows are MIT-LCP's output for its free-text reports."""
    for study, (text, row) in MIMIC_REPORTS.items():
        if row is not None:
            assert parse_sections(text) == tuple(" ".join(part.split()) for part in row), study


EXPECTED_TEST = ["mimic-s50000004", "mimic-s50000007", "mimic-s50000009", "mimic-s50000010"]
EXPECTED_SKIPS = {"mimic-s50000005": "short-target: 1 tokens (minimum 10)", "mimic-s50000006": "report-missing",
                  "mimic-s50000012": "short-target: 0 tokens (minimum 10)"}


@pytest.mark.parametrize("reports", SOURCES)
def test_sample(tmp_path: Path, reports: str) -> None:
    task = MIMICCXRReport(write_mimic(tmp_path, reports=reports))
    train, test = task.load("train"), task.load("test")
    assert [s.id for s in train] == ["mimic-s50000001", "mimic-s50000002"]
    assert [s.id for s in test] == EXPECTED_TEST
    first = train[0]
    assert first.image_path.endswith("files/p10/p10000001/s50000001/d1.jpg")  # PA, lowest dicom_id
    assert first.answer == f"{LONG_FINDINGS} No acute process."
    assert first.answer_type is AnswerType.REPORT
    assert train[1].meta["dicom_id"] == "d4"
    assert train[1].answer == ("Stable moderate cardiomegaly with mild pulmonary edema and small bilateral "
                               "effusions.")  # FINDINGS AND IMPRESSION
    by_id = {s.id: s for s in test}
    assert by_id["mimic-s50000004"].answer.endswith(". No pneumonia.")  # CONCLUSION
    assert by_id["mimic-s50000007"].answer == f"{LONG_FINDINGS} Unchanged."  # IMPRESSIONS
    assert by_id["mimic-s50000009"].meta["dicom_id"] == "d13"  # PA over AP
    assert by_id["mimic-s50000009"].answer.startswith("Heart size is normal.")  # a view heading is findings
    expected_source = "mimic_cxr_sectioned" if reports == "sectioned" else "medbench-parser"
    assert first.meta["section_source"] == expected_source
    reasons = {s.id: s.reason for s in task.skipped}
    assert reasons.pop("mimic-s50913680").startswith("report-hand-sectioned")
    assert reasons == EXPECTED_SKIPS
    assert task.provenance["filtered"] == {"train: no frontal image": 1}
    assert task.provenance["layout"] == "mimic-cxr-jpg" and "report_sources_ignored" not in task.provenance
    assert task.count_checks["test"]["rows"] == 8 and task.count_checks["test"]["unscorable"] == 4


def _snapshot(task: MIMICCXRReport) -> tuple:
    samples = task.load("train") + task.load("test")
    return ([(s.id, s.split, s.answer, Path(s.image_path).name) for s in samples],
            sorted((s.id, s.reason) for s in task.skipped),
            {k: {f: v for f, v in c.items()} for k, c in task.count_checks.items()})


def test_report_sources_agree_record_for_record(tmp_path: Path) -> None:
    snapshots = {kind: _snapshot(MIMICCXRReport(write_mimic(tmp_path / kind, reports=kind))) for kind in SOURCES}
    assert snapshots["sectioned"] == snapshots["zip"] == snapshots["files"]
    samples = snapshots["sectioned"][0]
    assert len(samples) == 6 and len(snapshots["sectioned"][1]) == 4


def test_mixed_sources_priority(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="medbench.tasks")
    task = MIMICCXRReport(write_mimic(tmp_path / "all", reports=("sectioned", "zip", "files")))
    task.load("test")
    assert task.provenance["report_source"] == "sectioned: mimic_cxr_sectioned.csv"
    assert task.provenance["report_sources_ignored"] == ["zip: mimic-cxr-reports.zip", "files: files"]
    assert "using sectioned: mimic_cxr_sectioned.csv" in caplog.text
    task = MIMICCXRReport(write_mimic(tmp_path / "two", reports=("zip", "files")))
    assert task.load("test")[0].meta["section_source"] == "medbench-parser"
    assert task.provenance["report_source"] == "zip: mimic-cxr-reports.zip"
    assert task.provenance["report_sources_ignored"] == ["files: files"]
    # the JPGs' files/ folder is not a report source when it holds no reports
    task = MIMICCXRReport(write_mimic(tmp_path / "one", reports="zip"))
    task.load("test")
    assert "report_sources_ignored" not in task.provenance


def test_image_root(tmp_path: Path, capsys) -> None:
    """Reports in one folder, the MIMIC-CXR-JPG folder (CSVs and JPGs) in another."""
    reports, jpg = tmp_path / "mimic-cxr", tmp_path / "mimic-cxr-jpg"
    write_mimic(reports, reports="zip", images=jpg, csvs=jpg)
    assert not (reports / "files").exists()
    with pytest.raises(DataRootError, match="mimic-cxr-2.0.0-split.csv"):
        MIMICCXRReport(reports).load("test")
    task = MIMICCXRReport(reports, image_root=jpg)
    test = task.load("test")
    assert [s.id for s in test] == EXPECTED_TEST
    assert all(s.image_path.startswith(str(jpg / "files")) for s in test)
    assert task.provenance["image_root"] == str(jpg)
    together = MIMICCXRReport(write_mimic(tmp_path / "together", reports="zip"))
    assert [s.answer for s in together.load("test")] == [s.answer for s in test]
    assert main(["data", "check", "--task", "mimic-cxr-report", "--data-root", str(reports), "--image-root", str(jpg),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_root"] == str(jpg) and out["data_root"] == str(reports)
    assert out["splits"]["test"] == {"rows": 8, "n": 4, "unscorable": 4, "open": 0, "closed": 0, "mc": 0,
                                     "report": 4}
    assert out["splits"]["train"] == {"rows": 2, "n": 2, "unscorable": 0, "open": 0, "closed": 0, "mc": 0,
                                      "report": 2}
    assert main(["data", "check", "--task", "mimic-cxr-report", "--data-root", str(reports), "--image-root",
                 str(jpg)]) == 0
    text = capsys.readouterr().out
    assert f"image root: {jpg}" in text and "scorable" in text and "unscorable rows" in text
    # an image root without files/ is a layout error, not 8 silent image-missing skips
    with pytest.raises(DataRootError, match="no files/ folder"):
        MIMICCXRReport(write_mimic(tmp_path / "r2", reports="zip", images=tmp_path / "jpg2", csvs=tmp_path / "r2"),
                       image_root=tmp_path / "r2").load("test")


def test_r2gen_layout(tmp_path: Path) -> None:
    task = MIMICCXRReport(write_mimic_r2gen(tmp_path))
    train, test = task.load("train"), task.load("test")
    assert [s.id for s in train] == ["mimic-s50414267"]
    assert [s.id for s in test] == ["mimic-s50414270", "mimic-s50414272"]
    first = test[0]
    assert first.image_path.endswith("mimic_cxr/images/p10/p10000035/s50414270/0d0000aa.jpg")  # lowest dicom_id
    assert first.answer.startswith("The cardiac silhouette is enlarged.")
    assert first.meta["section_source"] == "r2gen-annotation" and first.meta["layout"] == "r2gen-annotation"
    reasons = {s.id: s.reason for s in task.skipped}
    assert reasons == {"mimic-s50414268": "short-target: 7 tokens (minimum 10)", "mimic-s50414271": "report-missing"}
    assert task.provenance["layout"] == "r2gen-annotation" and task.source_format == "r2gen-annotation"
    assert task.provenance["view_rule"].startswith("lowest dicom_id")
    assert task.dataset_id == "mimic-cxr-report-r2gen"
    assert task.build_manifest()["dataset_id"] == "mimic-cxr-report-r2gen"


def test_r2gen_with_jpg_image_root_and_views(tmp_path: Path) -> None:
    """R2Gen's annotation.json with the images of the MIMIC-CXR-JPG folder (its files/) and its metadata."""
    jpg = tmp_path / "mimic-cxr-jpg"
    write_mimic_r2gen(tmp_path / "r2gen", images=jpg / "files")
    import gzip

    with gzip.open(jpg / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        fh.write("dicom_id,subject_id,study_id,ViewPosition\n0d0000aa,10000035,50414270,LATERAL\n"
                 "4c4499c1,10000035,50414270,PA\n")
    task = MIMICCXRReport(tmp_path / "r2gen", image_root=jpg)
    test = task.load("test")
    assert test[0].image_path == str(jpg / "files/p10/p10000035/s50414270/4c4499c1.jpg")  # PA over LATERAL
    assert task.provenance["view_rule"].startswith("PA, else AP")
    # the others have no metadata row: not frontal, filtered
    assert task.provenance["filtered"] == {"test: no frontal image": 2, "train: no frontal image": 2}


def test_both_layouts_use_mimic_cxr_jpg(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="medbench.tasks")
    root = write_mimic(tmp_path, reports="sectioned")
    write_mimic_r2gen(tmp_path)
    task = MIMICCXRReport(root)
    assert [s.id for s in task.load("test")] == EXPECTED_TEST
    assert task.provenance["layout"] == "mimic-cxr-jpg" and "R2Gen layout" in task.provenance["ignored"]
    assert "using the MIMIC-CXR-JPG layout" in caplog.text


def test_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DataRootError, match="mimic-cxr-2.0.0-split.csv"):
        MIMICCXRReport(tmp_path).load("test")
    root = write_mimic(tmp_path)
    import gzip

    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        fh.write("dicom_id,subject_id\nd1,1\n")
    with pytest.raises(MalformedDataError, match="record 0 field 'ViewPosition'"):
        MIMICCXRReport(root).load("test")
    r2 = write_mimic_r2gen(tmp_path / "r2")
    ann = r2 / "mimic_cxr" / "annotation.json"
    data = json.loads(ann.read_text())
    del data["test"][0]["study_id"]
    ann.write_text(json.dumps(data))
    task = MIMICCXRReport(r2)
    task.load("test")
    assert any("field 'study_id': missing" in s.reason for s in task.skipped)
    with pytest.raises(MalformedDataError, match="study_id"):
        MIMICCXRReport(r2, strict=True).load("test")


def test_golden_prompt(tmp_path: Path) -> None:
    sample = MIMICCXRReport(write_mimic(tmp_path)).load("test")[0]
    assert TINY.render(sample.question, "<image>") == (
        "USER: <image>\nAnalyze the chest X-ray and generate a concise medical report. ASSISTANT:")


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
def test_end_to_end(tmp_path: Path) -> None:
    results = run_tiny("mimic-cxr-report", write_mimic(tmp_path / "data"), tmp_path / "runs")
    assert results["task"] == "mimic-cxr-report"
    assert results["data"]["source_format"] == "mimic-cxr-jpg"
    assert results["data"]["provenance"]["layout"] == "mimic-cxr-jpg"


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
def test_end_to_end_r2gen_with_image_root(tmp_path: Path) -> None:
    """`run --image-root`: R2Gen's annotation in one folder, its images in another; results.json says so."""
    write_mimic_r2gen(tmp_path / "ann", images=tmp_path / "imgs" / "images")
    results = run_tiny("mimic-cxr-report", tmp_path / "ann", tmp_path / "runs", "--image-root", str(tmp_path / "imgs"))
    assert results["counts"]["planned"] == 2
    assert results["data"]["source_format"] == "r2gen-annotation"
    assert results["data"]["provenance"]["layout"] == "r2gen-annotation"
    assert results["data"]["provenance"]["image_root"] == str(tmp_path / "imgs")
    run = json.loads((Path(results["run_dir"]) / "run.json").read_text())
    assert run["config"]["image_root"] == str(tmp_path / "imgs")
