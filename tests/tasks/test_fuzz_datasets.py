"""Fuzzing the SLAKE and VQA-RAD loaders: malformed records are counted skips with a reason, or a
DataRootError naming the file; unsafe image paths are refused; never another exception."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures_datasets import slake_record, vqarad_record, write_slake, write_vqa_rad
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medbench.task import DataRootError
from medbench.tasks.slake import SLAKE
from medbench.tasks.vqa_rad import JSON_NAME, VQARAD

FUZZ = settings(derandomize=True, max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EVIL_PATHS = ["../../etc/passwd", "/etc/passwd", "xmlab1/../../../secret.jpg", "..", "", " ", "a\x00b.jpg",
              "xmlab1/source.jpg/..", "C:\\windows\\x.jpg", "\\\\server\\share.jpg", "x" * 5000, "é/ü/✓.jpg",
              "synpic100.jpg/../../VQA_RAD Dataset Public.json"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from(["", " ", "x" * 100_000, "\u202e\u0000\ud7ff", "OPEN", "closed ", "en", "zh",
                                     "test_para", "test_freeform", *EVIL_PATHS]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner,
                                                                                            max_size=2), max_leaves=4)


def mutated(base: Callable[[int], dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A valid record with some fields dropped or replaced, or a non-object."""
    def build(i: int, drops: list[str], edits: dict[str, Any]) -> dict[str, Any]:
        rec = base(i)
        for key in drops:
            rec.pop(key, None)
        rec.update(edits)
        return rec

    keys = st.sampled_from(sorted(base(0)))
    return st.one_of(
        st.builds(build, st.integers(0, 50), st.lists(keys, max_size=2), st.dictionaries(keys, values, max_size=3)),
        values,
    )


def slake_base(i: int) -> dict[str, Any]:
    return slake_record(i, 1 + i % 3, "Is the lung healthy?", "Yes", "CLOSED")


def vqarad_base(i: int) -> dict[str, Any]:
    return vqarad_record(i, "test_para", "synpic100.jpg", "Is there a fracture?", "Yes", "CLOSED")


def documents(base: Callable[[int], dict[str, Any]]) -> st.SearchStrategy[bytes]:
    as_json = st.lists(mutated(base), max_size=6).map(lambda rs: json.dumps(rs, ensure_ascii=False).encode("utf-8"))
    return st.one_of(as_json, as_json, as_json, values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=30),
                     st.sampled_from([b"[" * 5000, b"\xef\xbb\xbf[]", b'[{"qid": 1,']))


@pytest.fixture(scope="module")
def roots() -> dict[str, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-datasets-"))
    return {"slake": write_slake(tmp / "slake") / "Slake1.0", "vqa-rad": write_vqa_rad(tmp / "vqarad")}


def _check(task: Any, root: Path, data_file: Path, doc: bytes) -> None:
    data_file.write_bytes(doc)
    try:
        samples = task.load("test")
    except DataRootError as exc:
        assert str(data_file) in str(exc), str(exc)[:200]
        return
    try:
        records = json.loads(doc)
    except (ValueError, RecursionError):
        records = []
    inside = os.path.realpath(root)
    for s in samples:
        assert os.path.commonpath([inside, os.path.realpath(s.image_path)]) == inside
        assert s.answer.strip() and isinstance(s.question, str)
    for skip in task.skipped:
        assert skip.reason and isinstance(skip.id, str)
        if skip.reason.startswith("malformed"):
            assert str(data_file) in skip.reason and "field" in skip.reason
    assert len(samples) + len(task.skipped) <= max(len(records), 0) if isinstance(records, list) else True


@FUZZ
@given(doc=documents(slake_base))
def test_slake_loader(roots: dict[str, Path], doc: bytes) -> None:
    root = roots["slake"]
    task = SLAKE(data_root=root)
    _check(task, root, root / "test.json", doc)
    if task._loaded.get("test") is not None and doc.startswith(b"[{"):
        records = json.loads(doc)
        filtered = sum(task.provenance.get("filtered", {}).get("test", {}).values())
        assert len(task._loaded["test"]) + len(task.skipped) + filtered == len(records)


@FUZZ
@given(doc=documents(vqarad_base))
def test_vqa_rad_loader(roots: dict[str, Path], doc: bytes) -> None:
    root = roots["vqa-rad"]
    _check(VQARAD(data_root=root), root, root / JSON_NAME, doc)


def test_path_traversal_image_names_are_refused(roots: dict[str, Path]) -> None:
    root = roots["slake"]
    records = [{**slake_base(i), "img_name": name} for i, name in enumerate(EVIL_PATHS)]
    (root / "test.json").write_text(json.dumps(records), encoding="utf-8")
    task = SLAKE(data_root=root)
    assert task.load("test") == []
    reasons = [s.reason for s in task.skipped]
    assert len(reasons) == len(EVIL_PATHS)
    assert all(r.startswith(("unsafe-path", "image-missing", "malformed")) for r in reasons), reasons
    assert sum(r.startswith("unsafe-path") for r in reasons) >= 5
