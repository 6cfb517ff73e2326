"""Phantom v3's finding labeler (protocol phantom-findings-v3) and its Finding-F1 through scoring."""

from __future__ import annotations

import pytest

from medbench.tasks.phantom import PhantomReport
from medbench.tasks.phantom.common import stream_rng
from medbench.tasks.phantom.draw import MODALITIES
from medbench.tasks.phantom.finding_f1 import finding_f1
from medbench.tasks.phantom.v3.anatomy import sample_findings
from medbench.tasks.phantom.v3.findings import PROTOCOL, finding_metric, label_report, reference_findings
from medbench.tasks.phantom.v3.text import make_report


def _generated(n: int) -> list[tuple[object, str]]:
    out = []
    for i in range(n):
        f = sample_findings(MODALITIES[i % 3], stream_rng("3", 0, "labels", i, "image"))
        out.append((f, make_report(f, stream_rng("3", 0, "labels", i, "text"))))
    return out


def test_every_generated_report_labels_back_to_its_findings():
    cases = _generated(600)
    for f, report in cases:
        assert label_report(report) == reference_findings(f), report
        assert reference_findings(f.to_json()) == reference_findings(f)
    categories = {c for f, _ in cases for c, _ in reference_findings(f)}
    assert categories == {"modality", "plane", "lesion", "lesion_kind", "lesion_count", "lesion_size",
                          "lesion_intensity", "enlarged", "normal_size", "absent", "device", "normal"}


def test_findings_are_place_specific():
    """The same lesion in the other kidney, or the other lesion's size, is a different finding."""
    ref = label_report("Axial CT of the abdomen. There is a small hypodense cyst in the left kidney. "
                       "The right kidney is enlarged.")
    assert ref == {("modality", "ct"), ("plane", "axial"), ("lesion", "kidney_left"),
                   ("lesion_kind", "kidney_left:cyst"), ("lesion_count", "kidney_left:1"),
                   ("lesion_size", "kidney_left:small"), ("lesion_intensity", "kidney_left:dark"),
                   ("enlarged", "kidney_right")}
    wrong_side = label_report("Axial CT of the abdomen. There is a small hypodense cyst in the right kidney. "
                              "The left kidney is enlarged.")
    assert finding_f1(ref, wrong_side) == pytest.approx(2 * 2 / (8 + 8))
    partial = label_report("Axial CT of the abdomen. There is a large cyst in the left kidney.")
    assert 0.5 < finding_f1(ref, partial) < 1.0
    assert label_report("No lesion in the left upper lung zone.") == {("normal", "lung_upper_left")}
    assert label_report("The left eye is not seen in this slice.") == {("absent", "eye_left")}


def test_finding_f1_metric_and_scoring_family():
    from medbench.scoring import score_report

    (_, report), (_, other) = _generated(2)
    rows = [{"id": "same", "answer": report, "prediction": report},
            {"id": "other", "answer": report, "prediction": other},
            {"id": "empty", "answer": report, "prediction": ""}]
    result = finding_metric(0).compute(rows)["finding_f1"]
    expected_other = finding_f1(label_report(report), label_report(other))
    assert result.per_sample == {"same": 1.0, "other": pytest.approx(expected_other), "empty": 0.0}
    assert result.protocol == PROTOCOL and result.counts["n_empty"] == 1
    families = PhantomReport().metric_families()
    _, _, per_sample, counts = score_report(rows, 0, task_families=families)
    assert per_sample["finding_f1"]["same"] == 1.0
    assert counts["metric_details"]["phantom_findings"]["protocol"] == PROTOCOL
