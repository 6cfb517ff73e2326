"""Phantom v2's rule-based finding labeler and the Finding-F1 metric (protocol phantom-findings-v1)."""

from __future__ import annotations

import numpy as np
import pytest

from medbench.metrics import MetricUnavailable
from medbench.tasks.phantom import PhantomReport
from medbench.tasks.phantom.draw import MODALITIES
from medbench.tasks.phantom.v2.anatomy import sample_findings
from medbench.tasks.phantom.v2.findings import (
    PROTOCOL,
    finding_f1,
    finding_metric,
    label_report,
    reference_findings,
)
from medbench.tasks.phantom.v2.text import make_report


def _generated(n: int) -> list[tuple[object, str]]:
    out = []
    for i in range(n):
        f = sample_findings(MODALITIES[i % len(MODALITIES)], np.random.default_rng(i))
        out.append((f, make_report(f, np.random.default_rng(10_000 + i))))
    return out


def test_every_generated_report_labels_back_to_its_findings():
    cases = _generated(300)
    for f, report in cases:
        assert label_report(report) == reference_findings(f), report
    kinds = {k for f, _ in cases for k in [f.kind] if k}
    assert kinds == {"cyst", "tumor", "nodule", "opacity", "effusion"}


def test_reference_findings_accepts_the_manifest_dict():
    f, report = _generated(1)[0]
    assert reference_findings(f.to_json()) == label_report(report)


def test_labeler_reads_paraphrases_and_negations():
    found = label_report("Computed tomography of the abdomen. Two dark masses in the right kidney. "
                         "The liver and spleen are unremarkable. No pleural effusion or pneumothorax.")
    assert found == {("modality", "ct"), ("lesion_kind", "tumor"), ("lesion_count", "2"),
                     ("lesion_intensity", "dark"), ("lesion_site", "kidney"), ("lesion_side", "right"),
                     ("normal", "liver"), ("normal", "spleen"), ("normal", "pleura")}
    assert label_report("There is no lesion in the liver.") == {("normal", "liver")}
    assert label_report("The kidneys are not seen at this level.") == {("absent", "kidney_left"),
                                                                        ("absent", "kidney_right")}


def test_finding_f1_edge_cases():
    _, report = _generated(2)[1]
    other = "Frontal chest X-ray. A cardiac pacemaker is seen."
    assert finding_f1(label_report(report), label_report(report)) == 1.0
    assert label_report(report) and label_report(other)
    assert not label_report(report) & label_report(other)
    rows = [{"id": "same", "answer": report, "prediction": report},
            {"id": "disjoint", "answer": report, "prediction": other},
            {"id": "empty", "answer": report, "prediction": "  "},
            {"id": "failed", "answer": report, "prediction": "", "error": "oom"}]
    result = finding_metric(0).compute(rows)["finding_f1"]
    assert result.per_sample == {"same": 1.0, "disjoint": 0.0, "empty": 0.0}
    assert result.value == pytest.approx(1 / 3)
    assert result.protocol == PROTOCOL and result.ci is not None
    assert result.counts["n_empty"] == 1 and result.counts["errors"] == 1


def test_partial_credit():
    ref = label_report("Axial CT of the abdomen. The liver contains two small hypodense cysts.")
    pred = label_report("Axial CT of the abdomen. The liver contains a small cyst.")
    assert 0.0 < finding_f1(ref, pred) < 1.0


def _unavailable(*args, **kwargs):
    raise MetricUnavailable("no coco in this test")


def test_score_report_adds_the_task_families_finding_f1(monkeypatch):
    import medbench.metrics.report as report_metrics
    from medbench.scoring import score_report

    monkeypatch.setattr(report_metrics, "ReportMetrics", _unavailable)
    _, report = _generated(1)[0]
    rows = [{"id": "a", "answer": report, "prediction": report}]
    families = PhantomReport(version="2").metric_families()
    metrics, cis, per_sample, counts = score_report(rows, 0, task_families=families)
    assert metrics["finding_f1"] == 1.0 and per_sample["finding_f1"] == {"a": 1.0}
    assert counts["metric_details"]["phantom_findings"]["protocol"] == PROTOCOL
    metrics, *_ = score_report(rows, 0)
    assert "finding_f1" not in metrics


def test_score_report_survives_a_labeler_failure(monkeypatch):
    import medbench.metrics.report as report_metrics
    import medbench.tasks.phantom.v2.findings as pf
    from medbench.scoring import score_report

    monkeypatch.setattr(report_metrics, "ReportMetrics", _unavailable)
    families = {"phantom_findings": lambda seed: pf.FindingF1(lambda text: 1 / 0, pf.PROTOCOL, "broken")}
    metrics, _, _, counts = score_report([{"id": "a", "answer": "x", "prediction": "y"}], 0,
                                         task_families=families)
    assert "finding_f1" not in metrics and "phantom_findings" in counts["unavailable"]
