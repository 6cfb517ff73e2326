"""Finding-F1 = 2|R ∩ P| / (|R| + |P|) on hand-counted partial matches (not Jaccard |R ∩ P| / |R ∪ P|)."""

from __future__ import annotations

import pytest

from medbench.tasks.phantom.finding_f1 import finding_f1
from medbench.tasks.phantom.v3.findings import finding_metric, label_report

A, B, C, D = ("lesion", "liver"), ("modality", "ct"), ("plane", "axial"), ("enlarged", "spleen")

REFERENCE = ("Axial CT of the abdomen. There is a small hypodense cyst in the left kidney. "
             "The right kidney is enlarged.")
PARTIAL = "Axial CT of the abdomen. There is a large cyst in the left kidney."


def test_finding_f1_by_hand():
    assert finding_f1({A, B, C}, {A, D}) == pytest.approx(2 * 1 / (3 + 2))  # 0.4; Jaccard would give 1/4
    assert finding_f1({A, B}, {A, B, C, D}) == pytest.approx(2 * 2 / (2 + 4))  # 2/3; Jaccard 1/2
    assert finding_f1({A, B, C}, {D}) == 0.0
    assert finding_f1({A, B}, {B, A}) == 1.0
    assert finding_f1(set(), set()) == 1.0
    assert finding_f1({A}, set()) == 0.0


def test_partial_report_match_counted_by_hand():
    ref, pred = label_report(REFERENCE), label_report(PARTIAL)
    # reference: modality, plane, and the left kidney's lesion, kind, count, size, intensity; the right
    # kidney enlarged (8). The prediction keeps modality, plane, lesion, kind and count and states a
    # large instead of a small cyst, with no intensity and no enlargement (6 findings, 5 shared).
    assert len(ref) == 8 and len(pred) == 6 and len(ref & pred) == 5
    assert finding_f1(ref, pred) == pytest.approx(10 / 14)  # Jaccard: 5/9


def test_finding_f1_metric_rows_by_hand():
    rows = [
        {"id": "same", "answer": REFERENCE, "prediction": REFERENCE},  # 1
        {"id": "partial", "answer": REFERENCE, "prediction": PARTIAL},  # 10/14
        {"id": "other", "answer": REFERENCE,  # shares modality and plane only: 2·2/(8+3)
         "prediction": "Axial CT of the abdomen. The spleen is enlarged."},
        {"id": "empty", "answer": REFERENCE, "prediction": ""},  # 0, counted as empty
        {"id": "failed", "answer": REFERENCE, "prediction": "", "error": "timeout"},  # not scored
    ]
    assert len(label_report(rows[2]["prediction"])) == 3
    result = finding_metric(0).compute(rows)["finding_f1"]
    assert result.per_sample == pytest.approx({"same": 1.0, "partial": 10 / 14, "other": 4 / 11, "empty": 0.0})
    assert result.value == pytest.approx((1.0 + 10 / 14 + 4 / 11 + 0.0) / 4)
    assert result.counts["n_empty"] == 1 and result.counts["errors"] == 1 and result.n == 4
