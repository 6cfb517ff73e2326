"""The predictions file as resume state: torn lines, fingerprints, error rows."""

from __future__ import annotations

import json

import pytest

from medbench.predictions import FingerprintMismatch, PredictionsFileError, PredictionsWriter, read_rows
from medbench.types import Prediction


def _p(i: str, error=None) -> Prediction:
    return Prediction(id=i, prompt_hash="h", prediction="yes", answer="yes", answer_type="closed", seed=1, error=error)


def test_append_and_resume(tmp_path):
    path = tmp_path / "predictions.jsonl"
    w = PredictionsWriter(path, "fp1")
    w.append([_p("a"), _p("b", error="boom")])
    again = PredictionsWriter(path, "fp1")
    assert set(again.done) == {"a"}  # error rows are retried
    header, rows = read_rows(path)
    assert header["fingerprint"] == "fp1" and [r["id"] for r in rows] == ["a", "b"]


def test_torn_last_line_is_cut(tmp_path):
    path = tmp_path / "predictions.jsonl"
    PredictionsWriter(path, "fp").append([_p("a"), _p("b")])
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # a kill in the middle of writing row b
    w = PredictionsWriter(path, "fp")
    assert set(w.done) == {"a"}
    assert path.read_bytes().endswith(b"\n")
    w.append([_p("b")])
    assert path.read_bytes() == data


def test_other_fingerprint_refused(tmp_path):
    path = tmp_path / "predictions.jsonl"
    PredictionsWriter(path, "fp-one").append([_p("a")])
    with pytest.raises(FingerprintMismatch, match="different configuration"):
        PredictionsWriter(path, "fp-two")


def test_corrupt_middle_line_names_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"header": True, "fingerprint": "x"}) + "\n{oops\n" + "{}\n")
    with pytest.raises(PredictionsFileError, match=":2:"):
        read_rows(path)
