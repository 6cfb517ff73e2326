"""``medbench compare --paired``: per-sample paired bootstrap differences and McNemar's test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medbench.atomic import atomic_write_json
from medbench.cli import main
from medbench.metrics.bootstrap import resample_indices
from medbench.metrics.vqa import VQAMetrics
from medbench.paired import PairedCompareError, mcnemar_exact, paired_compare, render_paired


def write_run(root: Path, name: str, per_sample: dict[str, dict[str, float]], *, task: str = "phantom-vqa",
              task_version: str = "2", protocol: str = "llava_med",
              headlines: dict[str, float | None] | None = None) -> Path:
    """A run directory as ``medbench score`` leaves it: results.json plus per_sample.json.

    Headlines are the per-sample means unless given (corpus metrics have their own).
    """
    run_dir = root / "tiny-med-llava" / task / name
    metrics: dict[str, float | None] = {m: math.fsum(v.values()) / len(v) for m, v in per_sample.items() if v}
    metrics.update(headlines or {})
    tuning, _, decoding = name.partition("+")
    results = {
        "schema_version": 1, "task": task, "task_version": task_version, "model": "tiny-med-llava",
        "tuning": tuning, "decoding": decoding, "method_args": {}, "metric_protocol": protocol,
        "metrics": metrics, "confidence_intervals": {m: None for m in metrics},
        "counts": {"planned": len({i for v in per_sample.values() for i in v}), "failed": 0},
        "limit": None, "fingerprint": name, "seed": 0, "run_dir": str(run_dir),
    }
    atomic_write_json(run_dir / "per_sample.json", per_sample)
    atomic_write_json(run_dir / "results.json", results)
    return run_dir


def ids(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def column(values: list[float]) -> dict[str, float]:
    return dict(zip(ids(len(values)), values))


def reference_paired_ci(a: list[float], b: list[float], n_resamples: int, seed: int, level: float = 0.95):
    """The documented contract: one resample of the (sorted) ids, applied to A and B alike."""
    xa, xb = np.asarray(a), np.asarray(b)
    stats = [xb[idx].mean() - xa[idx].mean() for idx in resample_indices(len(a), n_resamples, seed)]
    tail = 100 * (1 - level) / 2
    return tuple(np.percentile(stats, [tail, 100 - tail]))


# ---- McNemar -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (1, 6, 0.125),  # 2 * (1 + 7) / 128
        (6, 1, 0.125),
        (0, 5, 0.0625),  # 2 * 1 / 32
        (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (0, 0, 1.0),
        (3, 3, 1.0),  # 2 * 42 / 64 > 1
        (0, 1, 1.0),
    ],
)
def test_mcnemar_exact_matches_hand_binomials(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-15)


def test_mcnemar_large_counts_stay_finite():
    assert 0.0 < mcnemar_exact(900, 1100) < 1e-4


# ---- paired differences ------------------------------------------------------------------------
def test_hand_computed_means_difference_and_mcnemar(tmp_path):
    # open_recall: B is A + 0.1 on every sample, so every resample's difference is exactly 0.1
    recall_a = [0.2, 0.4, 0.6, 0.8, 0.0, 1.0, 0.5, 0.5, 0.3, 0.7]
    recall_b = [v + 0.1 for v in recall_a]
    # closed_accuracy: sample 0 right only in A (b = 1), samples 1-6 right only in B (c = 6)
    closed_a = [1, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    closed_b = [0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    a = write_run(tmp_path, "none+greedy", {"open_recall": column(recall_a), "closed_accuracy": column(closed_a)})
    b = write_run(tmp_path, "lora+greedy", {"open_recall": column(recall_b), "closed_accuracy": column(closed_b)})
    cmp = paired_compare(a, b, n_resamples=500)
    by = {m.metric: m for m in cmp.metrics}
    assert cmp.n_samples == 10 and not cmp.skipped

    recall = by["open_recall"]
    assert (recall.n, recall.mean_a, recall.mean_b) == (10, pytest.approx(0.5), pytest.approx(0.6))
    assert recall.diff == pytest.approx(0.1)
    assert recall.ci == pytest.approx((0.1, 0.1))
    assert recall.mcnemar is None

    closed = by["closed_accuracy"]
    assert (closed.mean_a, closed.mean_b, closed.diff) == (pytest.approx(0.3), pytest.approx(0.8), pytest.approx(0.5))
    assert (closed.mcnemar.b, closed.mcnemar.c) == (1, 6)
    assert closed.mcnemar.p == pytest.approx(0.125)

    swapped = {m.metric: m for m in paired_compare(b, a, n_resamples=500).metrics}
    assert swapped["open_recall"].diff == pytest.approx(-0.1)
    assert (swapped["closed_accuracy"].mcnemar.b, swapped["closed_accuracy"].mcnemar.c) == (6, 1)


def test_ci_is_the_paired_percentile_bootstrap(tmp_path):
    rng = np.random.default_rng(7)
    a_vals = rng.uniform(size=40).round(3).tolist()
    b_vals = rng.uniform(size=40).round(3).tolist()
    a = write_run(tmp_path, "none+greedy", {"open_recall": column(a_vals)})
    b = write_run(tmp_path, "none+vcd", {"open_recall": column(b_vals)})
    for seed, n_res in ((0, 1000), (5, 300)):
        (m,) = paired_compare(a, b, seed=seed, n_resamples=n_res).metrics
        assert m.ci == pytest.approx(reference_paired_ci(a_vals, b_vals, n_res, seed), abs=1e-12)
        assert m.diff == pytest.approx(np.mean(b_vals) - np.mean(a_vals))


def test_ci_contains_true_difference_and_pairing_narrows_it(tmp_path):
    """A shared per-sample effect (question difficulty) cancels in the paired difference only."""
    rng = np.random.default_rng(3)
    n, effect = 200, 0.05
    difficulty = rng.uniform(0.0, 0.8, size=n)
    a_vals = (difficulty + rng.normal(0, 0.02, size=n)).tolist()
    b_vals = (difficulty + effect + rng.normal(0, 0.02, size=n)).tolist()
    a = write_run(tmp_path, "none+greedy", {"intensity": column(a_vals)})
    b = write_run(tmp_path, "a3tune+greedy", {"intensity": column(b_vals)})
    (m,) = paired_compare(a, b, seed=1, n_resamples=1000).metrics
    assert m.ci[0] < effect < m.ci[1]

    # the same statistic with independent resamples of A and of B (no pairing)
    xa, xb = np.asarray(a_vals), np.asarray(b_vals)
    ra, rb = np.random.default_rng(11), np.random.default_rng(12)
    unpaired = [xb[rb.integers(0, n, n)].mean() - xa[ra.integers(0, n, n)].mean() for _ in range(1000)]
    low, high = np.percentile(unpaired, [2.5, 97.5])
    assert low < effect < high
    assert (m.ci[1] - m.ci[0]) < 0.25 * (high - low)


def test_pipeline_values_from_the_vqa_scorer(tmp_path):
    """Per-sample values produced by the llava_med scorer, written as a scored run writes them."""
    gts = [("yes", "closed"), ("no", "closed"), ("yes", "closed"), ("left lung", "open")]
    preds_a = ["yes", "yes", "no", "left"]
    preds_b = ["yes", "no", "yes", "left lung"]

    def run(name: str, preds: list[str]) -> Path:
        rows = [{"id": f"q{i}", "prediction": p, "answer": g, "answer_type": t, "error": None}
                for i, (p, (g, t)) in enumerate(zip(preds, gts))]
        results = VQAMetrics("llava_med", seed=0, n_resamples=50).compute(rows)
        return write_run(tmp_path, name, {k: r.per_sample for k, r in results.items() if r.per_sample},
                         headlines={k: r.value for k, r in results.items()})

    cmp = paired_compare(run("none+greedy", preds_a), run("none+beam", preds_b), n_resamples=200)
    by = {m.metric: m for m in cmp.metrics}
    closed = by["closed_accuracy"]
    assert (closed.n, closed.mean_a, closed.mean_b) == (3, pytest.approx(1 / 3), pytest.approx(1.0))
    assert (closed.mcnemar.b, closed.mcnemar.c, closed.mcnemar.p) == (0, 2, pytest.approx(0.5))
    recall = by["open_recall"]
    assert (recall.n, recall.mean_a, recall.mean_b, recall.diff) == (1, 0.5, 1.0, 0.5)
    assert not any(m.corpus_headline for m in cmp.metrics)


# ---- corpus metrics ----------------------------------------------------------------------------
def test_corpus_metrics_are_labelled_mean_of_per_sample(tmp_path):
    bleu_a, bleu_b = [0.1, 0.3, 0.2, 0.4], [0.2, 0.3, 0.4, 0.5]
    rouge_a, rouge_b = [0.5, 0.5, 0.6, 0.6], [0.6, 0.6, 0.6, 0.6]
    odd_a, odd_b = [0.2, 0.2, 0.2, 0.2], [0.4, 0.4, 0.4, 0.4]
    a = write_run(tmp_path, "none+greedy",
                  {"bleu4": column(bleu_a), "rouge_l": column(rouge_a), "finding_f1": column(odd_a)},
                  task="phantom-report", protocol="coco", headlines={"bleu4": 0.31, "finding_f1": 0.5})
    b = write_run(tmp_path, "none+dola",
                  {"bleu4": column(bleu_b), "rouge_l": column(rouge_b), "finding_f1": column(odd_b)},
                  task="phantom-report", protocol="coco", headlines={"bleu4": 0.36, "finding_f1": 0.7})
    cmp = paired_compare(a, b, n_resamples=200)
    by = {m.metric: m for m in cmp.metrics}
    bleu = by["bleu4"]
    assert bleu.corpus_headline and (bleu.headline_a, bleu.headline_b) == (0.31, 0.36)
    assert (bleu.mean_a, bleu.mean_b, bleu.diff) == (pytest.approx(0.25), pytest.approx(0.35), pytest.approx(0.1))
    assert "per-sample" in bleu.note
    # a metric not known to be corpus-level whose headline is not its per-sample mean is caught too
    assert by["finding_f1"].corpus_headline
    assert not by["rouge_l"].corpus_headline and by["rouge_l"].headline_a is None

    data = json.loads(render_paired(cmp, "json"))
    assert data["metrics"]["bleu4"]["basis"] == "per_sample_mean_of_corpus_metric"
    assert data["metrics"]["rouge_l"]["basis"] == "mean"
    text = render_paired(cmp, "markdown")
    assert "bleu4†" in text and "rouge_l†" not in text
    assert "headlines A 31.00, B 36.00" in text and "mean of per-sample scores" in text


# ---- refusals and skips ------------------------------------------------------------------------
def test_refuses_different_tasks(tmp_path):
    a = write_run(tmp_path, "none+greedy", {"closed_accuracy": column([1, 0])})
    b = write_run(tmp_path, "none+greedy", {"closed_accuracy": column([1, 1])}, task="slake")
    with pytest.raises(PairedCompareError, match="tasks differ.*'phantom-vqa'.*'slake'"):
        paired_compare(a, b)
    c = write_run(tmp_path / "v3", "none+greedy", {"closed_accuracy": column([1, 1])}, task_version="3")
    with pytest.raises(PairedCompareError, match="task versions differ"):
        paired_compare(a, c)


def test_refuses_different_ids_and_intersect_uses_the_common_ones(tmp_path):
    a = write_run(tmp_path, "none+greedy", {"closed_accuracy": {"x": 1.0, "y": 0.0, "z": 1.0, "only_a": 1.0}})
    b = write_run(tmp_path, "none+beam",
                  {"closed_accuracy": {"x": 0.0, "y": 1.0, "z": 0.0, "only_b1": 0.0, "only_b2": 1.0}})
    with pytest.raises(PairedCompareError) as err:
        paired_compare(a, b)
    msg = str(err.value)
    assert "1 only in A" in msg and "2 only in B" in msg and "3 in both" in msg and "--intersect" in msg
    cmp = paired_compare(a, b, intersect=True, n_resamples=100)
    assert (cmp.n_samples, cmp.only_in_a, cmp.only_in_b) == (3, 1, 2)
    (m,) = cmp.metrics
    assert (m.n, m.mean_a, m.mean_b) == (3, pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert "3 common sample ids used; 1 only in A and 2 only in B left out" in render_paired(cmp)


def test_refuses_runs_without_per_sample_values(tmp_path):
    a = write_run(tmp_path, "none+greedy", {"closed_accuracy": column([1, 0])})
    b = write_run(tmp_path, "none+beam", {"closed_accuracy": column([1, 1])})
    (b / "per_sample.json").unlink()
    with pytest.raises(PairedCompareError, match="B .* has no per-sample values .*medbench score"):
        paired_compare(a, b)
    atomic_write_json(b / "per_sample.json", {})
    with pytest.raises(PairedCompareError, match="no per-sample values"):
        paired_compare(a, b)


def test_metric_missing_in_one_run_is_skipped_with_a_note(tmp_path):
    a = write_run(tmp_path, "none+greedy",
                  {"closed_accuracy": column([1, 0, 1]), "coverage": column([0.1, 0.2, 0.3])},
                  headlines={"meteor": 0.2})
    b = write_run(tmp_path, "none+beam", {"closed_accuracy": column([1, 1, 1])})
    cmp = paired_compare(a, b, n_resamples=100)
    assert [m.metric for m in cmp.metrics] == ["closed_accuracy"]
    reasons = {s.metric: s.reason for s in cmp.skipped}
    assert reasons == {"coverage": "per-sample values only in A",
                       "meteor": "no per-sample values; headline only in A"}
    assert "Skipped: coverage (per-sample values only in A)" in render_paired(cmp)


def test_metric_scored_on_fewer_samples_in_one_run_pairs_the_common_ones(tmp_path):
    a = write_run(tmp_path, "none+greedy", {"closed_accuracy": column([1, 0, 1, 1]),
                                            "coverage": column([0.1, 0.2, 0.3, 0.4])})
    b = write_run(tmp_path, "none+beam", {"closed_accuracy": column([1, 1, 1, 0]),
                                          "coverage": {"s000": 0.5, "s001": 0.5}})
    by = {m.metric: m for m in paired_compare(a, b, n_resamples=100).metrics}
    cov = by["coverage"]
    assert (cov.n, cov.mean_a, cov.mean_b) == (2, pytest.approx(0.15), pytest.approx(0.5))
    assert "2 only in A" in cov.note


def test_non_binary_closed_accuracy_gets_no_mcnemar(tmp_path):
    a = write_run(tmp_path, "none+greedy", {"closed_accuracy": column([1, 0.5])})
    b = write_run(tmp_path, "none+beam", {"closed_accuracy": column([1, 1])})
    (m,) = paired_compare(a, b, n_resamples=50).metrics
    assert m.mcnemar is None and "not 0/1" in m.note


def test_directory_with_several_runs_is_refused(tmp_path):
    a = write_run(tmp_path, "none+greedy", {"closed_accuracy": column([1, 0])})
    write_run(tmp_path, "none+beam", {"closed_accuracy": column([1, 1])})
    with pytest.raises(PairedCompareError, match="holds 2 runs"):
        paired_compare(a, tmp_path)
    one = tmp_path / "solo"
    solo = write_run(one, "lora+greedy", {"closed_accuracy": column([0, 1])})
    assert paired_compare(a / "results.json", one, n_resamples=10).b == str(solo)


# ---- command line ------------------------------------------------------------------------------
def test_cli_paired_json_markdown_and_refusal(tmp_path, capsys):
    closed_a = [1, 0, 0, 0, 0, 0, 0, 1]
    closed_b = [0, 1, 1, 1, 1, 1, 1, 1]
    a = write_run(tmp_path, "none+greedy", {"closed_accuracy": column(closed_a)})
    b = write_run(tmp_path, "lora+greedy", {"closed_accuracy": column(closed_b)})

    assert main(["compare", "--paired", str(a), str(b), "--format", "json", "--seed", "3",
                 "--n-resamples", "400"]) == 0
    data = json.loads(capsys.readouterr().out)
    entry = data["metrics"]["closed_accuracy"]
    assert (data["task"], data["n_samples"], data["seed"], data["n_resamples"]) == ("phantom-vqa", 8, 3, 400)
    assert (entry["n"], entry["mean_a"], entry["mean_b"], entry["diff"]) == (8, 0.25, 0.875, pytest.approx(0.625))
    assert entry["ci"] == pytest.approx(list(reference_paired_ci(closed_a, closed_b, 400, 3)))
    assert entry["mcnemar"] == {"b": 1, "c": 6, "p": pytest.approx(0.125)}

    assert main(["compare", str(a), str(b), "--paired"]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| closed_accuracy")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["closed_accuracy", "8", "25.00", "87.50", "+62.50"] and cells[6] == "1 / 6 / 0.125"

    c = write_run(tmp_path, "none+beam", {"closed_accuracy": column(closed_b[:6])})
    assert main(["compare", "--paired", str(a), str(c)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medbench: error: the runs score different sample ids: 2 only in A")
    assert "--intersect" in err
    assert main(["compare", "--paired", "--intersect", str(a), str(c), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["only_in_a"] == 2

    assert main(["compare", str(a), str(b), "--intersect"]) == 2
    assert "only apply with --paired" in capsys.readouterr().err


def test_cli_help_shows_paired_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "medbench compare --paired" in text and "--n-resamples" in text and "--intersect" in text
