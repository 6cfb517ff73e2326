"""PathVQA loader: pickles (protocols 2 and 4) through the restricted unpickler, and the parquet mirror."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, pvqa_record, run_tiny, write_pathvqa, write_pathvqa_parquet

from medbench.backbones.templates import TINY
from medbench.task import DataRootError
from medbench.tasks.pathvqa import PathVQA, UnsafePickleError
from medbench.types import AnswerType

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def test_pickle_release(tmp_path: Path) -> None:
    task = PathVQA(write_pathvqa(tmp_path))
    train = task.load("train")
    assert task.source_format == "pickle" and task.version == "1"
    assert [s.id for s in train] == ["pvqa-100", "pvqa-101"]
    assert train[0].answer == "in the canals of hering" and train[0].answer_type is AnswerType.OPEN
    assert train[1].answer == "yes" and train[1].answer_type is AnswerType.CLOSED
    assert train[0].image_path.endswith("pvqa/images/train/train_0001.jpg")
    assert train[0].question == "Where are liver stem cells located?"
    assert [(s.id, s.reason) for s in task.skipped] == [
        ("pvqa-102", "pvqa-label: label has 2 keys, expected exactly one")]
    assert [s.id for s in task.load("val")] == ["pvqa-200"]
    assert [s.id for s in task.load("test")] == ["pvqa-300", "pvqa-301"]
    assert task.provenance["qa_cross_check"]["test"] == {"vqa_rows": 2, "qa_rows": 2}
    assert task.count_checks["train"]["table6"] == 19755


def test_unsafe_pickle_in_dataset(tmp_path: Path) -> None:
    root = write_pathvqa(tmp_path)
    sentinel = tmp_path / "pwned"
    (root / "pvqa" / "qas" / "test_vqa.pkl").write_bytes(f"cos\nsystem\n(Vtouch {sentinel}\ntR.".encode())
    with pytest.raises(UnsafePickleError, match="os.system"):
        PathVQA(root).load("test")
    assert not sentinel.exists()


def test_bad_records(tmp_path: Path) -> None:
    root = write_pathvqa(tmp_path)
    records = [pvqa_record(1, "../../etc/x", "Q?", {"yes": 1}, "yes/no"),
               pvqa_record(2, "test_0001", "Q?", {"yes": 1}, "maybe"),
               {"question_id": 3, "img_id": "test_0001", "label": {"no": 1}, "answer_type": "yes/no"}]
    (root / "pvqa" / "qas" / "test_vqa.pkl").write_bytes(pickle.dumps(records, protocol=4))
    task = PathVQA(root)
    assert task.load("test") == []
    reasons = {s.id: s.reason for s in task.skipped}
    assert reasons["pvqa-1"].startswith("unsafe-path")
    assert "field 'answer_type'" in reasons["pvqa-2"]
    assert "record 3 field 'sent': missing" in reasons["pvqa-3"]


def test_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(DataRootError, match="qas/"):
        PathVQA(tmp_path).load("test")
    with pytest.raises(ValueError):
        PathVQA(tmp_path, source_format="csv")


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed")
def test_parquet_without_pyarrow_names_the_package(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataRootError, match="pyarrow"):
        PathVQA(tmp_path).load("test")


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_parquet_mirror(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / "cache"))
    task = PathVQA(write_pathvqa_parquet(tmp_path / "data"))
    test = task.load("test")
    assert task.source_format == "parquet" and task.version == "1+parquet"
    assert task.provenance["dataset_label"] == "pathvqa-parquet" and task.count_checks["test"]["table6"] is None
    assert [s.answer_type for s in test] == [AnswerType.OPEN, AnswerType.CLOSED]
    assert Path(test[0].image_path).is_file()
    assert [s.id for s in task.load("val")] == ["pvqa-pq-val-000000"]


def test_golden_prompt(tmp_path: Path) -> None:
    sample = PathVQA(write_pathvqa(tmp_path)).load("test")[0]
    assert TINY.render(sample.question, "<image>") == "USER: <image>\nWhat stain is used? ASSISTANT:"


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
def test_end_to_end(tmp_path: Path) -> None:
    results = run_tiny("pathvqa", write_pathvqa(tmp_path / "data"), tmp_path / "runs")
    assert results["task"] == "pathvqa"
