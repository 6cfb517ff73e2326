"""Multiple-choice answers (answer type ``mc``, OmniMedVQA): counted as ``mc`` by scoring, shown in the
paper's OmniVQA column under their own label, judged by ``show`` with the scoring rule, and left out of
the shortcut probes with a count."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fixtures_datasets import write_omnimedvqa
from test_probe import Synthetic

from medbench import tables as T
from medbench.cli import main
from medbench.metrics.mc import MCMetrics, mc_hit
from medbench.metrics.vqa import substring_hit
from medbench.probe import ProbeError, render_text, run_probes
from medbench.scoring import score_mc, score_vqa
from medbench.show import _verdict
from medbench.types import AnswerType, Sample

FOUR = ["CT", "MRI", "X-ray", "Fundus photography"]


def mc_sample(answer: str = "Fundus photography", options: list[str] | None = None) -> Sample:
    return Sample("omni-1", "img.png", "What modality is used?", answer, AnswerType.MC, "test", None,
                  {"options": FOUR if options is None else options})


# ---- scoring counts ------------------------------------------------------------------------------
def test_mc_rows_are_counted_as_mc_not_closed():
    samples = {f"q{i}": Sample(f"q{i}", "x.png", "What modality?", "MRI", AnswerType.MC, "test", None,
                               {"options": FOUR}) for i in range(3)}
    rows = [{"id": "q0", "prediction": "MRI", "answer": "MRI", "answer_type": "mc"},
            {"id": "q1", "prediction": "CT", "answer": "MRI", "answer_type": "mc"},
            {"id": "q2", "prediction": "", "answer": "MRI", "answer_type": "mc", "error": "oom"}]
    metrics, _, per_sample, counts = score_mc(rows, samples, seed=0)
    assert counts == {"mc": 2}  # the failed row is not a scored question
    assert metrics["closed_accuracy"] == pytest.approx(0.5)
    assert per_sample["closed_accuracy"] == {"q0": 1.0, "q1": 0.0}
    assert MCMetrics().compute([{**r, "options": FOUR} for r in rows])["closed_accuracy"].counts == {
        "errors": 1, "mc": 2}


def test_closed_and_open_counts_unchanged():
    samples = {"a": Sample("a", "x.png", "Is it?", "yes", AnswerType.CLOSED, "test"),
               "b": Sample("b", "x.png", "What?", "liver", AnswerType.OPEN, "test")}
    rows = [{"id": "a", "prediction": "yes", "answer": "yes", "answer_type": "closed"},
            {"id": "b", "prediction": "the liver", "answer": "liver", "answer_type": "open"}]
    _, _, _, counts = score_vqa(rows, samples, {}, seed=0)
    assert (counts["open"], counts["closed"]) == (1, 1) and "mc" not in counts


# ---- show ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["Fundus", "fundus photo", "(D) Fundus photography", "mri", "X-ray", ""])
def test_show_judges_mc_answers_with_the_scoring_rule(prediction):
    sample = mc_sample()
    expected = "tab:green" if mc_hit(prediction, sample.answer, FOUR) else "tab:red"
    assert _verdict(sample, prediction) == expected


def test_show_mc_verdict_differs_from_the_substring_rule_where_they_disagree():
    sample = mc_sample()
    # the nearest option is the answer, though the answer is not a substring of the prediction
    assert not substring_hit("Fundus", sample.answer) and _verdict(sample, "Fundus") == "tab:green"
    # the substring rule ignores case; mc@difflib does not (the reference's trap, kept by scoring)
    mri = mc_sample("MRI")
    assert substring_hit("mri", "MRI") and _verdict(mri, "mri") == "tab:red"
    assert _verdict(mri, "MRI") == "tab:green"
    from medbench.show import ShowError

    with pytest.raises(ShowError, match="no options"):
        _verdict(mc_sample(options=[]), "MRI")


# ---- tables ----------------------------------------------------------------------------------------
def result(task: str, metrics: dict, protocol: str, counts: dict | None = None) -> dict:
    return {"schema_version": 1, "task": task, "model": "llava-med", "tuning": "none", "decoding": "greedy",
            "method_args": {}, "metric_protocol": protocol, "metrics": metrics, "confidence_intervals": {},
            "counts": {"planned": 10, "scored": 10, "failed": 0, **(counts or {})}, "limit": None,
            "timing": {"finished_at": "2025-01-01T00:00:00+00:00"}}


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.split("\n\n", 1)[0])))


def test_tables_show_omnimedvqa_in_the_papers_column_labelled_as_mc():
    res = [result("slake", {"open_recall": 0.4, "closed_accuracy": 0.6}, "llava_med", {"open": 5, "closed": 5}),
           result("omnimedvqa", {"closed_accuracy": 0.3}, "mc@difflib", {"mc": 10})]
    text = T.render("vqa", res, "csv", compare_paper=True)
    rows = rows_of(text)
    assert rows[0][:4] == ["Model", "Method", "SLAKE Open", "SLAKE Open (paper)"]
    assert "SLAKE Closed" in rows[0] and "OmniVQA Closed" not in rows[0]
    mc = rows[0].index("OmniVQA Accuracy (MC)")
    assert rows[0][mc + 1:mc + 3] == ["OmniVQA Accuracy (MC) (paper)", "OmniVQA Accuracy (MC) Δ"]
    greedy = next(r for r in rows[1:] if r[1] == "Greedy")
    assert greedy[mc:mc + 3] == ["30.00", "31.11", "-1.11"]  # the paper's Table 1 Greedy row, OmniVQA
    assert "multiple-choice accuracy (mc@difflib" in text and "printed there as \"Closed\"" in text
    doc = json.loads(T.render("vqa", res, "json"))
    cols = {c["key"]: c for c in doc["columns"]}
    assert cols["omnimedvqa/closed_accuracy"]["label"] == "OmniVQA Accuracy (MC)"
    assert cols["omnimedvqa/closed_accuracy"]["answer_type"] == "mc"
    assert cols["slake/closed_accuracy"]["label"] == "SLAKE Closed" and "answer_type" not in cols["slake/closed_accuracy"]
    # the empty table keeps the paper's columns, OmniVQA's labelled for what it holds
    assert rows_of(T.render("vqa", [], "csv"))[0][-2:] == ["IU-Xray Closed", "OmniVQA Accuracy (MC)"]


def test_tables_keep_closed_label_for_closed_answers_and_flag_a_mix():
    res = [result("phantom-vqa", {"open_recall": 0.5, "closed_accuracy": 0.5}, "llava_med")]
    assert rows_of(T.render("vqa", res, "csv"))[0][2:] == ["phantom-vqa Open", "phantom-vqa Closed"]
    mixed = [result("omnimedvqa", {"closed_accuracy": 0.3}, "mc@difflib"),
             {**result("omnimedvqa", {"closed_accuracy": 0.4}, "llava_med"), "decoding": "vcd"}]
    text = T.render("vqa", mixed, "csv")
    assert rows_of(text)[0][2:] == ["OmniVQA Closed"]  # not all multiple choice: no MC label
    assert "mixes metric protocols" in text


# ---- probe -----------------------------------------------------------------------------------------
class WithMC(Synthetic):
    """The synthetic closed-question task plus multiple-choice questions on the same images."""

    def load(self, split: str) -> list[Sample]:
        base = super().load(split)
        mc = [Sample(f"{s.id}-mc", s.image_path, "Which modality? options: CT, MRI", "MRI", AnswerType.MC, split,
                     s.roi, {"options": ["CT", "MRI"]}) for s in base if s.answer_type == AnswerType.CLOSED][:7]
        return base + mc


def test_probe_leaves_out_mc_questions_with_a_count(tmp_path: Path):
    n = {"train": 60, "test": 30}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = run_probes(Synthetic(tmp_path / "a", n=n), include_open=False, progress=False)
    with_mc = run_probes(WithMC(tmp_path / "b", n=n), include_open=False, progress=False)
    assert with_mc.mc_skipped == {"train": 7, "test": 7} and plain.mc_skipped == {"train": 0, "test": 0}
    # the closed probes see exactly the closed questions
    assert (with_mc.n_train, with_mc.n_test) == (plain.n_train, plain.n_test)
    assert with_mc.closed.to_json() == plain.closed.to_json()
    doc = with_mc.to_json()
    assert doc["mc_skipped"]["train"] == doc["mc_skipped"]["test"] == 7
    assert "not probed" in doc["mc_skipped"]["reason"]
    assert "mc_skipped" not in plain.to_json()  # a task without them: the document is as before
    assert "left out multiple-choice questions (7 train, 7 test)" in render_text(with_mc)
    assert "multiple-choice" not in render_text(plain)


class MCTestSplit(WithMC):
    """Closed questions to train on, but only multiple-choice ones in the test split."""

    def load(self, split: str) -> list[Sample]:
        rows = super().load(split)
        return [s for s in rows if s.answer_type == AnswerType.MC] if split == "test" else rows


def test_probe_refuses_a_test_split_of_mc_questions_saying_why(tmp_path: Path):
    with pytest.raises(ProbeError, match=r"no closed questions to score \(left out 7 train \+ 7 test multiple-choice"):
        run_probes(MCTestSplit(tmp_path, n={"train": 20, "test": 10}), include_open=False, progress=False)


def test_probe_refuses_an_all_mc_task_saying_why(tmp_path: Path, capsys):
    from medbench.datacheck import make_task

    root = write_omnimedvqa(tmp_path / "omni")
    task = make_task("omnimedvqa", str(root))
    n_mc = {split: sum(s.answer_type == AnswerType.MC for s in task.load(split)) for split in ("train", "test")}
    assert all(n_mc.values())
    with pytest.raises(ProbeError, match="multiple-choice"):
        run_probes(task, progress=False)
    assert main(["-q", "data", "probe", "--task", "omnimedvqa", "--data-root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"left out {n_mc['train']} train + {n_mc['test']} test multiple-choice questions" in err
