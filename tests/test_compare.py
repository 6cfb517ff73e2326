"""medbench.compare: metric-by-metric diffs with CIs, provenance differences, the paper as a side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medbench.compare import compare, render_compare


def result(
    model="llava-med",
    task="slake",
    tuning="none",
    decoding="greedy",
    metrics=None,
    ci=0.02,
    limit=None,
    finished="2025-01-01T00:00:00+00:00",
    seed=0,
    fingerprint="f" * 16,
    torch_version="2.14.1",
):
    metrics = metrics or {}
    return {
        "schema_version": 1,
        "task": task,
        "task_version": "1",
        "model": model,
        "tuning": tuning,
        "decoding": decoding,
        "method_args": {},
        "metric_protocol": "llava_med",
        "metrics": metrics,
        "confidence_intervals": {k: {"low": v - ci, "high": v + ci} for k, v in metrics.items()},
        "counts": {"planned": 100, "scored": 100, "failed": 0},
        "fingerprint": fingerprint,
        "seed": seed,
        "versions": {"medbench": "0.1.0", "torch": torch_version},
        "limit": limit,
        "timing": {"finished_at": finished, "seconds": 12.0},
    }


def write(root: Path, res: dict, suffix: str = "") -> Path:
    path = root / res["model"] / res["task"] / f"{res['tuning']}+{res['decoding']}{suffix}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return path


def by(rows, **match):
    hits = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, (match, hits)
    return hits[0]


def test_two_result_dirs_flag_differences_outside_the_cis(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, result(metrics={"open_recall": 0.43, "closed_accuracy": 0.60}))
    write(a, result(decoding="vcd", metrics={"closed_accuracy": 0.55}))
    write(
        b,
        result(
            metrics={"open_recall": 0.50, "closed_accuracy": 0.605},
            seed=1,
            fingerprint="e" * 16,
            torch_version="2.13.0",
        ),
    )
    write(b, result(task="vqa-rad", metrics={"closed_accuracy": 0.7}))
    rows = compare(a, b)

    far = by(rows, kind="metric", task="slake", decoding="greedy", metric="open_recall")
    assert (far["a"], far["b"], far["delta"]) == (43.0, 50.0, -7.0)
    assert far["a_ci"] == pytest.approx((41.0, 45.0)) and far["flag"] is True
    near = by(rows, kind="metric", task="slake", decoding="greedy", metric="closed_accuracy")
    assert near["delta"] == pytest.approx(-0.5) and near["flag"] is False
    only_a = by(rows, kind="metric", task="slake", decoding="vcd")
    assert only_a["b"] is None and only_a["flag"] is None and only_a["note"] == "only in A"
    only_b = by(rows, kind="metric", task="vqa-rad")
    assert only_b["a"] is None and only_b["note"] == "only in B"

    fields = {r["field"]: (r["a"], r["b"]) for r in rows if r["kind"] == "field"}
    assert fields == {
        "fingerprint": ("f" * 16, "e" * 16),
        "seed": (0, 1),
        "versions.torch": ("2.14.1", "2.13.0"),
    }

    text = render_compare(rows, "markdown", "A", "B")
    assert "outside CI" in text and "versions.torch" in text and "1 of" in text


def test_flag_needs_a_ci_and_uses_either_side(tmp_path):
    a = write(tmp_path / "a", result(metrics={"closed_accuracy": 0.60}, ci=0.0))
    b = write(tmp_path / "b", result(metrics={"closed_accuracy": 0.61}, ci=0.05))
    rows = compare(a, b)
    assert (
        by(rows, metric="closed_accuracy")["flag"] is False
    )  # A inside B's CI (B outside A's zero-width CI)
    c = write(tmp_path / "c", result(metrics={"closed_accuracy": 0.70}, ci=0.05))
    assert by(compare(a, c), metric="closed_accuracy")["flag"] is True  # each outside the other's CI
    no_ci = result(metrics={"closed_accuracy": 0.61})
    no_ci["confidence_intervals"] = {}
    d = write(tmp_path / "d", no_ci)
    assert by(compare(d, d), metric="closed_accuracy")["flag"] is None


def test_single_files_pair_directly_and_dirs_prefer_full_newest_runs(tmp_path):
    a = write(tmp_path / "a", result(decoding="greedy", metrics={"closed_accuracy": 0.6}))
    b = write(tmp_path / "b", result(decoding="vcd", metrics={"closed_accuracy": 0.7}))
    rows = compare(a, b)
    assert by(rows, kind="metric")["delta"] == pytest.approx(-10.0)
    assert by(rows, kind="field", field="decoding")["b"] == "vcd"

    d = tmp_path / "d"
    write(d, result(metrics={"closed_accuracy": 0.9}, limit=5, finished="2025-03-01T00:00:00+00:00"), "-1")
    write(d, result(metrics={"closed_accuracy": 0.5}, finished="2025-01-01T00:00:00+00:00"), "-2")
    write(d, result(metrics={"closed_accuracy": 0.55}, finished="2025-02-01T00:00:00+00:00"), "-3")
    write(d, result(task="vqa-rad", metrics={"closed_accuracy": 0.5}))
    rows = compare(d, tmp_path / "a")
    assert by(rows, kind="metric", task="slake")["a"] == pytest.approx(55.0)


def test_against_the_paper(tmp_path):
    runs = tmp_path / "runs"
    write(runs, result(metrics={"open_recall": 0.4281, "closed_accuracy": 0.70, "coverage": 0.125}))
    write(runs, result(tuning="a3tune", metrics={"open_recall": 0.82}, ci=0.0))
    write(runs, result(model="tiny-med-llava", task="phantom-vqa", metrics={"open_recall": 0.5}))
    rows = compare(runs, "paper")
    assert all(r["kind"] == "metric" for r in rows)
    hit = by(rows, tuning="none", metric="open_recall")
    assert (hit["a"], hit["b"], hit["b_ci"], hit["flag"]) == (42.81, 42.81, None, False)
    miss = by(rows, tuning="none", metric="closed_accuracy")  # paper Greedy 60.00 outside [68, 72]
    assert miss["b"] == 60.0 and miss["delta"] == pytest.approx(10.0) and miss["flag"] is True
    cov = by(rows, tuning="none", metric="coverage")  # Table 2 has only the base row
    assert cov["b"] == 0.122 and cov["a"] == 0.125 and "default decoding" in cov["note"]
    a3 = by(rows, tuning="a3tune", metric="open_recall")
    assert a3["b"] == 82.36 and a3["flag"] is True and "default decoding" in a3["note"]
    assert not [r for r in rows if r["task"] == "phantom-vqa"]

    swapped = compare("paper", runs)
    hit = by(swapped, tuning="none", metric="closed_accuracy")
    assert (hit["a"], hit["b"], hit["flag"]) == (60.0, 70.0, True)
    assert "Metrics: paper vs runs" in render_compare(swapped, "markdown", "paper", "runs")
    assert render_compare(swapped, "csv").startswith("Model,Task,Tuning,Decoding,Metric,A,B")


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="both sides are the paper"):
        compare("paper", "paper")
    with pytest.raises(FileNotFoundError):
        compare(tmp_path / "missing", "paper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.json"):
        compare(tmp_path / "empty", "paper")
