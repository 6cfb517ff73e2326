"""Fuzzing the predictions reader and resume: malformed files give PredictionsFileError or a clean resume."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medbench.predictions import FingerprintMismatch, PredictionsFileError, PredictionsWriter, read_rows
from medbench.scoring import latest_rows

FUZZ = settings(derandomize=True, max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HEADER = json.dumps({"header": True, "schema_version": 1, "fingerprint": "fp"}, sort_keys=True).encode()
GOOD = {"id": "s1", "prediction": "yes", "answer": "yes", "answer_type": "closed", "seed": 1, "prompt_hash": "h"}

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=3), max_leaves=8)
bad_rows = st.fixed_dictionaries({}, optional={"id": values, "prediction": values, "error": values,
                                               "attention": values, "header": values})
lines = st.one_of(
    st.just(json.dumps(GOOD).encode()),
    st.builds(lambda sid, text: json.dumps({**GOOD, "id": sid, "prediction": text}, ensure_ascii=False).encode(),
              st.text(min_size=1, max_size=12), st.text(max_size=30)),
    bad_rows.map(lambda d: json.dumps(d).encode()),
    values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.sampled_from([b"[" * 5000, b"{" * 3000, b'{"id": "x", "prediction": "\xff\xfe"}', b"NaN", b"\x00"]),
)
files = st.builds(
    lambda head, body, torn: (head + b"\n" if head else b"") + b"".join(line + b"\n" for line in body) + torn,
    st.one_of(st.just(HEADER), st.sampled_from([b"", b"{}", b'{"header": 1, "fingerprint": "other"}', b"[]"])),
    st.lists(lines, max_size=6),
    st.one_of(st.just(b""), lines.map(lambda b: b[: max(1, len(b) // 2)])),
)


def _check_rows(rows: list[dict]) -> None:
    for row in rows:
        assert isinstance(row["id"], str) and isinstance(row["prediction"], str)
    latest_rows(rows)


@FUZZ
@given(data=files)
def test_reader_never_crashes_otherwise(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        path.write_bytes(data)
        try:
            header, rows = read_rows(path)
        except PredictionsFileError as exc:
            assert str(path) in str(exc)
            return
        assert header.get("header")
        _check_rows(rows)


@FUZZ
@given(data=files)
def test_resume_is_clean_or_refused(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        path.write_bytes(data)
        try:
            writer = PredictionsWriter(path, "fp")
        except (PredictionsFileError, FingerprintMismatch):
            assert path.read_bytes() == data[: data.rfind(b"\n") + 1] or path.read_bytes() == data
            return
        raw = path.read_bytes()
        assert raw.endswith(b"\n")
        header, rows = read_rows(path)
        assert header["fingerprint"] == "fp"
        assert set(writer.done) <= {r["id"] for r in rows}
        _check_rows(rows)

