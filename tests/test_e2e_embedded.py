"""End-to-end runs on the embedded tier with the shipped tiny-med-llava checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medbench.cli import main
from medbench.predictions import read_rows

LORA_ARGS = ["train_limit=48", "epochs=1", "batch_size=8"]


def run_cli(*args: str) -> int:
    return main(["-q", "run", *args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def greedy_run(workdir) -> Path:
    out = workdir / "runs"
    assert run_cli("--method", "greedy", "--task", "phantom-vqa", "--limit", "96", "--batch-size", "16",
                   "--output-dir", str(out)) == 0
    return out / "tiny-med-llava" / "phantom-vqa" / "none+greedy"


def text_only_baseline(limit: int) -> dict:
    """Chance level: the majority train answer for each question string, scored like the model."""
    from collections import Counter, defaultdict

    from medbench.metrics.vqa import VQAMetrics
    from medbench.tasks.phantom import PhantomVQA

    task = PhantomVQA()
    answers: dict[str, Counter] = defaultdict(Counter)
    for s in task.load("train"):
        answers[s.question][s.answer] += 1
    overall = Counter(s.answer for s in task.load("train"))
    rows = []
    for s in sorted(task.load("test"), key=lambda x: x.id)[:limit]:
        guess = (answers.get(s.question) or overall).most_common(1)[0][0]
        rows.append({"id": s.id, "prediction": guess, "answer": s.answer, "answer_type": s.answer_type.value})
    return {k: v.value for k, v in VQAMetrics("llava_med", bootstrap=False).compute(rows).items()}


def test_shipped_checkpoint_scores_above_chance(greedy_run):
    results = json.loads((greedy_run / "results.json").read_text())
    m, ci = results["metrics"], results["confidence_intervals"]
    assert results["counts"]["planned"] == 96 and results["counts"]["failed"] == 0
    chance = text_only_baseline(96)
    assert m["open_recall"] > chance["open_recall"] + 0.05, (m, chance)
    for key in ("closed_accuracy", "open_recall", "coverage", "intensity"):
        assert m[key] is not None and 0.0 <= m[key] <= 1.0
        assert ci[key]["low"] <= m[key] <= ci[key]["high"]
    assert results["metric_protocol"] == "llava_med"
    assert results["attention_protocol"].startswith("attn-v1")
    assert results["counts"]["with_attention"] == results["counts"]["with_roi"] == 96


def test_batch_size_one_equals_sixteen(greedy_run, workdir):
    out = workdir / "bs1"
    assert run_cli("--method", "greedy", "--task", "phantom-vqa", "--limit", "96", "--batch-size", "1",
                   "--output-dir", str(out), "--no-attention") == 0
    _, rows1 = read_rows(out / "tiny-med-llava" / "phantom-vqa" / "none+greedy" / "predictions.jsonl")
    _, rows16 = read_rows(greedy_run / "predictions.jsonl")
    assert [(r["id"], r["prediction"]) for r in rows1] == [(r["id"], r["prediction"]) for r in rows16]


def test_score_reproduces_results(greedy_run, capsys):
    before = json.loads((greedy_run / "results.json").read_text())
    assert main(["score", str(greedy_run), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["metrics"] == before["metrics"]
    assert after["timing"]["decode_seconds"] == before["timing"]["decode_seconds"]


def test_rerun_skips_finished_and_fingerprint_refusal(greedy_run, capsys):
    out = greedy_run.parents[2]
    pred = greedy_run / "predictions.jsonl"
    size = pred.stat().st_size
    assert run_cli("--method", "greedy", "--task", "phantom-vqa", "--limit", "96", "--batch-size", "16",
                   "--output-dir", str(out)) == 0
    assert pred.stat().st_size == size  # nothing decoded twice
    header, rows = read_rows(pred)
    tampered = greedy_run.parent / "tampered"
    tampered.mkdir()
    lines = pred.read_text().splitlines(keepends=True)
    lines[0] = json.dumps({**header, "fingerprint": "0" * 64}) + "\n"
    (greedy_run / "predictions.jsonl").write_text("".join(lines))
    try:
        assert run_cli("--method", "greedy", "--task", "phantom-vqa", "--limit", "96", "--batch-size", "16",
                       "--output-dir", str(out)) == 1
        assert "different configuration" in capsys.readouterr().err
    finally:
        pred.write_text("".join([json.dumps(header, sort_keys=True) + "\n"] + lines[1:]))


def _subprocess_run(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medbench", "-q", "run", "--method", "greedy", "--task", "phantom-vqa",
           "--limit", "64", "--batch-size", "4", "--output-dir", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))


def test_kill_midway_then_resume_is_identical(workdir):
    reference = workdir / "uninterrupted"
    killed = workdir / "killed"
    proc = _subprocess_run(reference)
    assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()
    proc = _subprocess_run(killed)
    pred = killed / "tiny-med-llava" / "phantom-vqa" / "none+greedy" / "predictions.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        if pred.exists() and pred.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines_at_kill = pred.read_bytes().count(b"\n")
    assert 1 < lines_at_kill < 65, "the kill should land midway"
    assert not (pred.parent / "results.json").exists()
    proc = _subprocess_run(killed)
    assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()
    ref_pred = reference / "tiny-med-llava" / "phantom-vqa" / "none+greedy" / "predictions.jsonl"
    assert pred.read_bytes() == ref_pred.read_bytes()


@pytest.fixture(scope="module")
def lora_runs(workdir) -> Path:
    out = workdir / "lora"
    common = ["--task", "phantom-vqa", "--limit", "32", "--batch-size", "16", "--output-dir", str(out),
              "--checkpoint-dir", str(workdir / "ckpt"), "--method-args", *LORA_ARGS]
    assert run_cli("--method", "lora", *common) == 0
    assert run_cli("--method", "beam", "--tuning", "lora", *common) == 0
    return out


def test_lora_then_beam_reuses_adapter(lora_runs, workdir):
    runs = sorted(p.parent.name for p in lora_runs.rglob("results.json"))
    assert len(runs) == 2 and runs[0].startswith("lora+beam") and runs[1].startswith("lora+greedy")
    ckpts = list((workdir / "ckpt").rglob("COMPLETE"))
    assert len(ckpts) == 1  # one adapter, trained once and reused
    for path in lora_runs.rglob("results.json"):
        results = json.loads(path.read_text())
        assert results["tuning"] == "lora"
        assert results["method_args"]["tuning"]["r"] == 64
        assert set(results["metrics"]) >= {"closed_accuracy", "open_recall", "coverage", "intensity"}
    beam = json.loads(next(lora_runs.rglob("lora+beam*/results.json")).read_text())
    assert beam["timing"]["train_seconds"] < 5  # reused, not retrained
    training = json.loads(next((workdir / "ckpt").rglob("training.json")).read_text())
    assert training["n_samples"] == 48 and len(training["losses"]) == 6


def test_report_run_has_lexical_metrics(workdir):
    out = workdir / "report"
    assert run_cli("--method", "greedy", "--task", "phantom-report", "--limit", "12", "--batch-size", "12",
                   "--output-dir", str(out)) == 0
    results = json.loads(next(out.rglob("results.json")).read_text())
    assert results["metric_protocol"] == "coco"
    for key in ("bleu1", "bleu4", "rouge_l", "meteor", "cider"):
        assert key in results["metrics"]
    assert results["metrics"]["bleu1"] > 0.1
    assert results["confidence_intervals"]["bleu4"]["low"] is not None


def test_table_renders_runs(greedy_run, capsys):
    assert main(["table", "--results", str(greedy_run.parents[2]), "--table", "vqa", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "Greedy" in out or "greedy" in out.lower()
