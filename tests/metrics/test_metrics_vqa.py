"""The llava_med VQA protocol (spec §2.1), its variants and the id join."""

from __future__ import annotations

import pytest

from medbench.metrics.vqa import (
    VQAMetrics,
    closed_hit,
    exact_hit,
    join_by_id,
    normalize_answer,
    normalize_word,
    open_em,
    open_scores,
    substring_hit,
)
from medbench.types import AnswerType, Sample


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("left-sided", "left sided"),
        ("1,000 left-sided", "1000 leftsided"),  # digit-comma-digit turns every replacement into a deletion
        ("x-ray - left", "xray left"),  # "-" next to a space: every "-" deleted
        ("x-ray of left-side, ok", "x ray of left side ok"),  # only "," touches a space
        ("yes, abnormal", "yes abnormal"),
        ("none", "0"),
        ("None of the above", "0 of above"),
        ("three nodules", "3 nodules"),
        ("the left lung", "left lung"),
        ("an apple a day", "apple day"),
        ("dont know", "don't know"),
        ("isnt it", "isn't it"),
        ("2.5 cm.", "2.5 cm"),
        ("size: 5%", "size: 5%"),  # colons and % are kept
        ("  Yes  ", "yes"),
        ("", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_removal_stops_after_32() -> None:
    assert normalize_word("x." * 32) == "x" * 32
    assert normalize_word("x." * 33) == "x" * 33 + "."


def test_closed_traps_kept_on_purpose() -> None:
    assert closed_hit("yes, abnormal", "no") == 1.0  # "no" inside "abnormal"
    assert closed_hit("nodule", "no") == 1.0  # "no" gate and substring both from "nodule"
    assert closed_hit("Yes.", "yes") == 1.0
    assert closed_hit("No", "yes") == 0.0
    assert closed_hit("left", "left") == 0.0  # non yes/no answers need a yes/no in the prediction
    assert closed_hit("no, left", "left") == 1.0
    assert closed_hit("", "no") == 0.0


def test_batch_and_exact_rules() -> None:
    assert substring_hit("left", "left") == 1.0
    assert substring_hit("The left lung.", "left lung") == 1.0
    assert substring_hit("", "no") == 0.0
    assert exact_hit("The Left Lung.", "left lung") == 1.0
    assert exact_hit("left lung mass", "left lung") == 0.0


def test_open_scores_hand_computed() -> None:
    recall, precision, f1 = open_scores("left left left", "left lung")
    assert (recall, precision) == (0.75, 1.0)  # tp counts prediction repeats: 3 / (3 + 1)
    assert f1 == pytest.approx(6 / 7)
    recall, precision, f1 = open_scores("right lung mass", "left lung")
    assert (recall, precision) == (0.5, pytest.approx(1 / 3))
    assert f1 == pytest.approx(0.4)
    assert open_scores("The left lung.", "left lung") == (1.0, 1.0, 1.0)
    assert open_scores("heart", "left lung") == (0.0, 0.0, 0.0)
    assert open_scores("", "left lung") == (0.0, 0.0, 0.0)
    assert open_scores("left lung", "") == (0.0, 0.0, 0.0)


def test_open_scores_normalise_twice_like_the_reference() -> None:
    # The first pass leaves the 33rd period; the token functions' second pass removes it.
    assert open_scores("x." * 33, "x" * 33) == (1.0, 1.0, 1.0)
    assert exact_hit("yes " + "x." * 33, "yes " + "x" * 33) == 0.0  # single pass outside them


def test_open_em_is_not_exact_match() -> None:
    assert open_em("left left lung", "left lung") == pytest.approx(2 / 3)
    assert open_em("left", "left lung") == 1.0  # 1 GT word found / 1 prediction token
    assert open_em("", "left lung") == 0.0


def _refs() -> list[Sample]:
    def sample(i: str, answer: str, kind: AnswerType) -> Sample:
        return Sample(
            id=i, image_path=f"{i}.png", question="q", answer=answer, answer_type=kind, split="test"
        )

    return [
        sample("c1", "no", AnswerType.CLOSED),
        sample("c2", "yes", AnswerType.CLOSED),
        sample("c3", "no", AnswerType.CLOSED),
        sample("o1", "left lung", AnswerType.OPEN),
        sample("o2", "heart", AnswerType.OPEN),
        sample("o3", "liver", AnswerType.OPEN),
    ]


def _preds() -> list[dict]:  # deliberately out of order
    return [
        {"id": "o2", "prediction": "The heart.", "error": None},
        {"id": "c3", "prediction": "nodule", "error": None},
        {"id": "o1", "prediction": "left left left", "error": None},
        {"id": "c1", "prediction": "yes, abnormal", "error": None},
        {"id": "o3", "prediction": "", "error": None},
        {"id": "c2", "prediction": "No.", "error": None},
    ]


def test_join_by_id_reorders_to_references() -> None:
    rows = join_by_id(_preds(), _refs())
    assert [r["id"] for r in rows] == ["c1", "c2", "c3", "o1", "o2", "o3"]
    assert rows[0] == {
        "id": "c1",
        "prediction": "yes, abnormal",
        "error": None,
        "answer": "no",
        "answer_type": "closed",
    }


def test_join_by_id_errors() -> None:
    with pytest.raises(ValueError, match=r"1 reference id\(s\) have no prediction: 'o3'"):
        join_by_id(_preds()[:4] + _preds()[5:], _refs())
    with pytest.raises(ValueError, match="not in the references: 'zz'"):
        join_by_id([*_preds(), {"id": "zz", "prediction": "x"}], _refs())
    with pytest.raises(ValueError, match="duplicate id.*predictions.*'c1'"):
        join_by_id([*_preds(), {"id": "c1", "prediction": "x"}], _refs())


def test_llava_med_metrics_hand_computed() -> None:
    out = VQAMetrics(seed=3).compute(join_by_id(_preds(), _refs()))
    closed = out["closed_accuracy"]
    assert closed.per_sample == {"c1": 1.0, "c2": 0.0, "c3": 1.0}
    assert closed.value == pytest.approx(2 / 3)
    assert closed.n == 3 and closed.protocol == "llava_med"
    recall = out["open_recall"]
    assert recall.per_sample == {"o1": 0.75, "o2": 1.0, "o3": 0.0}
    assert recall.value == pytest.approx(1.75 / 3)
    assert out["open_precision"].per_sample == {"o1": 1.0, "o2": 1.0, "o3": 0.0}
    assert out["open_f1"].value == pytest.approx((6 / 7 + 1.0) / 3)
    assert out["open_em"].per_sample == {"o1": pytest.approx(1 / 3), "o2": 1.0, "o3": 0.0}
    assert closed.ci is not None and closed.ci["seed"] == 3 and closed.ci["n_resamples"] == 1000
    assert closed.ci["low"] <= closed.value <= closed.ci["high"]
    assert closed.counts == {"n_rows": 6, "errors": 0, "open": 3, "closed": 3}


def test_error_rows_excluded_and_counted() -> None:
    preds = _preds()
    preds[0] = {"id": "o2", "prediction": "", "error": "CUDA out of memory"}
    out = VQAMetrics(bootstrap=False).compute(join_by_id(preds, _refs()))
    assert "o2" not in out["open_recall"].per_sample
    assert out["open_recall"].n == 2 and out["open_recall"].counts["errors"] == 1
    assert out["closed_accuracy"].ci is None


def test_empty_subset_gives_none_not_nan() -> None:
    rows = [{"id": "c1", "prediction": "yes", "answer": "yes", "answer_type": "CLOSED"}]
    out = VQAMetrics().compute(rows)
    assert out["closed_accuracy"].value == 1.0
    assert out["closed_accuracy"].ci["low"] == out["closed_accuracy"].ci["high"] == 1.0
    assert out["open_recall"].value is None and out["open_recall"].ci is None and out["open_recall"].n == 0


def test_compute_rejects_duplicates_and_bad_answer_types() -> None:
    row = {"id": "a", "prediction": "yes", "answer": "yes", "answer_type": "closed"}
    with pytest.raises(ValueError, match="duplicate"):
        VQAMetrics().compute([row, row])
    with pytest.raises(ValueError, match="answer_type"):
        VQAMetrics().compute([{**row, "answer_type": "report"}])
    with pytest.raises(ValueError, match="unknown VQA protocol"):
        VQAMetrics("lmms")


def test_batch_and_exact_protocols() -> None:
    rows = join_by_id(_preds(), _refs())
    batch = VQAMetrics("llava_med_batch", bootstrap=False).compute(rows)
    assert batch["closed_accuracy"].per_sample == {"c1": 1.0, "c2": 0.0, "c3": 1.0}
    assert batch["open_accuracy"].per_sample == {"o1": 0.0, "o2": 1.0, "o3": 0.0}
    assert batch["open_recall"].value == pytest.approx(1.75 / 3)
    gate = [{"id": "x", "prediction": "left", "answer": "left", "answer_type": "closed"}]
    assert VQAMetrics("llava_med_batch").compute(gate)["closed_accuracy"].value == 1.0
    assert VQAMetrics("llava_med").compute(gate)["closed_accuracy"].value == 0.0
    exact = VQAMetrics("exact", bootstrap=False).compute(rows)
    assert set(exact) == {"accuracy", "closed_accuracy", "open_accuracy"}
    assert exact["open_accuracy"].per_sample == {"o1": 0.0, "o2": 1.0, "o3": 0.0}
    assert exact["closed_accuracy"].per_sample == {"c1": 0.0, "c2": 0.0, "c3": 0.0}
    assert exact["accuracy"].value == pytest.approx(1 / 6)
