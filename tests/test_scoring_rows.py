"""Scoring a run directory: which prediction row counts for an id, and the counts in results.json.

The run directory is written by hand over the SLAKE fixture's test split (slake-test-10 closed
"Yes", slake-test-11 open "CT", slake-test-12 open "2"), so every expected number is known here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_datasets import write_slake

from medbench.geometry import crop_geometry
from medbench.scoring import latest_rows, score_run


def row(sample_id: str, prediction: str, error: str | None = None, answer: str = "x", kind: str = "open") -> dict:
    return {"id": sample_id, "prediction": prediction, "answer": answer, "answer_type": kind, "error": error}


def test_latest_rows_keeps_the_last_success_else_the_last_error():
    rows = [
        row("a", "", "timeout"), row("a", "first"),                    # a later success beats an error
        row("b", "old"), row("b", "new"),                              # the last success wins
        row("c", "kept"), row("c", "", "retry failed"),                # a later error never replaces a success
        row("d", "", "error 1"), row("d", "", "error 2"),              # only errors: the last one
        row("e", "", "error"), row("e", "mid"), row("e", "", "again"), row("e", "last"),
    ]
    out = latest_rows(rows)
    assert set(out) == {"a", "b", "c", "d", "e"}
    assert {k: (v["prediction"], v["error"]) for k, v in out.items()} == {
        "a": ("first", None), "b": ("new", None), "c": ("kept", None), "d": ("", "error 2"), "e": ("last", None)}
    assert latest_rows([]) == {}


def write_run(run_dir: Path, data_root: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    config = {"task": "slake", "data_root": str(data_root), "limit": None, "seed": 0, "model": "tiny-med-llava"}
    (run_dir / "run.json").write_text(json.dumps({
        "fingerprint": "fp", "config": config, "tuning": "none", "decoding": "greedy",
        "method_args": {"decoding": {}, "tuning": {}}, "geometry": crop_geometry(128, 8),
        "attention_protocol": None, "task_version": "1", "metric_protocol": "llava_med"}))
    lines = [json.dumps({"header": True, "schema_version": 1, "fingerprint": "fp"})]
    lines += [json.dumps(r) for r in rows]
    (run_dir / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.fixture
def slake_root(tmp_path: Path) -> Path:
    return write_slake(tmp_path / "data")


def test_results_json_counts_open_and_closed_and_scores_the_latest_rows(tmp_path: Path, slake_root: Path):
    rows = [
        row("slake-test-10", "", "out of memory", "Yes", "closed"), row("slake-test-10", "yes", None, "Yes", "closed"),
        row("slake-test-11", "mri", answer="CT"), row("slake-test-11", "ct", answer="CT"),
        row("slake-test-12", "2", answer="2"), row("slake-test-12", "", "retry failed", answer="2"),
    ]
    run = write_run(tmp_path / "run", slake_root, rows)
    results = score_run(run)
    counts = results["counts"]
    assert (counts["open"], counts["closed"]) == (2, 1)
    assert (counts["planned"], counts["scored"], counts["failed"]) == (3, 3, 0)
    assert results["metrics"]["closed_accuracy"] == 1.0  # "yes" for "Yes"
    assert results["metrics"]["open_recall"] == 1.0  # "ct" for "CT" (not the earlier "mri"), "2" for "2"
    assert json.loads((run / "results.json").read_text())["counts"] == counts


def test_results_json_counts_with_more_closed_than_open(tmp_path: Path, slake_root: Path):
    base = slake_root / "Slake1.0"
    records = json.loads((base / "test.json").read_text())
    for record in records:
        if record["qid"] == 11:
            record.update(answer="Yes", answer_type="CLOSED")
    (base / "test.json").write_text(json.dumps(records))
    rows = [row("slake-test-10", "no", None, "Yes", "closed"), row("slake-test-11", "yes", None, "Yes", "closed"),
            row("slake-test-12", "two", answer="2"), row("slake-test-12", "", "failed again", answer="2")]
    results = score_run(write_run(tmp_path / "run", slake_root, rows))
    assert (results["counts"]["open"], results["counts"]["closed"]) == (1, 2)
    assert results["metrics"]["closed_accuracy"] == 0.5  # "no" misses "Yes"; "yes" hits
    assert results["metrics"]["open_recall"] == 1.0  # "two" normalises to "2"
    assert (results["counts"]["scored"], results["counts"]["failed"]) == (3, 0)


def test_an_id_with_only_error_rows_is_failed_not_scored(tmp_path: Path, slake_root: Path):
    rows = [row("slake-test-10", "yes", None, "Yes", "closed"), row("slake-test-11", "", "bad image", answer="CT"),
            row("slake-test-11", "", "bad image again", answer="CT"), row("slake-test-12", "2", answer="2")]
    results = score_run(write_run(tmp_path / "run", slake_root, rows))
    assert (results["counts"]["planned"], results["counts"]["scored"], results["counts"]["failed"]) == (3, 2, 1)
    assert (results["counts"]["open"], results["counts"]["closed"]) == (1, 1)
    assert results["metrics"]["open_recall"] == 1.0
