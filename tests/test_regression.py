"""The CI regression check: tolerance rules, comparisons, and the committed baselines.

The end-to-end tests rerun single suite entries against ``results/baselines/`` and show that the
unchanged method passes while a changed hyperparameter fails the check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medbench import regression as R
from medbench.cli import main as cli
from medbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "results" / "baselines"


def result(task="phantom-vqa", decoding="greedy", selection=None, metrics=None, ci=None, counts=None):
    dec_args = {} if selection is None else {"selection": selection}
    metrics = metrics or {"closed_accuracy": 0.5, "coverage": 0.8}
    return {
        "task": task, "tuning": "none", "decoding": decoding,
        "method_args": {"decoding": dec_args, "tuning": {}},
        "metrics": metrics,
        "confidence_intervals": ci or {k: {"low": v - 0.1, "high": v + 0.1} for k, v in metrics.items()},
        "counts": counts or {"planned": 10, "scored": 10, "failed": 0},
    }


def test_suite_covers_every_decoding_on_base_and_lora_plus_a3tune():
    from medbench.registry import METHODS

    keys = {e.key for e in R.Suite().entries()}
    decoders = [n for n in METHODS.names() if METHODS.entry(n).info["kind"] == "decoding"]
    for task in ("phantom-vqa", "phantom-report"):
        for d in decoders:
            for tuning in ("none", "lora"):
                expected = not (d == "controlmllm" and task == "phantom-report")  # needs RoIs
                assert (f"{task}/{tuning}+{d}" in keys) == expected
        assert f"{task}/a3tune+greedy" in keys


def test_sampling_is_read_from_the_resolved_selection():
    assert R.is_sampling(result(decoding="nucleus"))
    assert R.is_sampling(result(decoding="vcd", selection="sample"))
    assert not R.is_sampling(result(decoding="dola", selection="greedy"))
    assert not R.is_sampling(result(decoding="beam"))


def test_deterministic_tolerance_is_pooled_thread_noise_times_factor_with_a_floor():
    results = {
        "a": result(decoding="greedy"),
        "b": result(decoding="beam"),
        "s": result(decoding="vcd", selection="sample"),
    }
    noise = {"a": {"closed_accuracy": 0.0, "coverage": 2e-4},
             "b": {"closed_accuracy": 0.0, "coverage": 5e-4},
             "s": {"closed_accuracy": 0.3, "coverage": 0.3}}  # sampling noise is not pooled
    tol = R.derive_tolerances(results, noise, {})
    assert tol["entries"]["a"]["metrics"]["coverage"]["tolerance"] == pytest.approx(R.NOISE_FACTOR * 5e-4)
    assert tol["entries"]["b"]["metrics"]["closed_accuracy"]["tolerance"] == R.FLOOR
    sampled = tol["entries"]["s"]["metrics"]["closed_accuracy"]
    assert sampled["tolerance"] == pytest.approx(0.1) and sampled["rule"].startswith("sampling")


def test_floor_is_relative_to_the_size_of_the_metric():
    """Stored attention grids keep 6 significant digits: a ratio near 6 (attention_peak) gets a floor
    of 6e-6, a fraction 1e-6. Measured: another CPU's kernels moved attention_peak 6.0747239 by 1.04e-6."""
    base = result(metrics={"closed_accuracy": 0.5, "attention_peak": 6.0747239, "roi_lift": -2.5})
    tol = R.derive_tolerances({"k": base}, {}, {})
    rows = tol["entries"]["k"]["metrics"]
    assert rows["closed_accuracy"]["tolerance"] == R.FLOOR
    assert rows["attention_peak"]["tolerance"] == pytest.approx(6.0747239e-6)
    assert rows["roi_lift"]["tolerance"] == pytest.approx(2.5e-6)
    nudged = result(metrics={"closed_accuracy": 0.5, "attention_peak": 6.0747239 + 1.04e-6, "roi_lift": -2.5})
    assert all(d.ok for d in R.compare_to_baseline("k", nudged, base, tol))
    moved = result(metrics={"closed_accuracy": 0.5 + 2e-6, "attention_peak": 6.0747239 + 7e-6, "roi_lift": -2.5})
    assert {d.metric for d in R.compare_to_baseline("k", moved, base, tol) if not d.ok} == {
        "closed_accuracy", "attention_peak"}


def test_sampling_metric_without_a_ci_is_an_error():
    res = result(decoding="nucleus", ci={"closed_accuracy": None, "coverage": {"low": 0.7, "high": 0.9}})
    with pytest.raises(ValueError, match="no CI"):
        R.derive_tolerances({"n": res}, {}, {})


def test_comparison_flags_moves_beyond_tolerance_missing_metrics_and_count_changes():
    base = result(metrics={"closed_accuracy": 0.5, "coverage": 0.8, "intensity": 0.4})
    tol = R.derive_tolerances({"k": base}, {"k": {"closed_accuracy": 0.0, "coverage": 0.01, "intensity": 0.0}}, {})
    same = R.compare_to_baseline("k", base, base, tol)
    assert all(d.ok for d in same) and len(same) == 3
    moved = result(metrics={"closed_accuracy": 0.5, "coverage": 0.8 + 0.029}, counts={"planned": 10, "scored": 9,
                                                                                     "failed": 1})
    by = {d.metric: d for d in R.compare_to_baseline("k", moved, base, tol)}
    assert by["coverage"].ok  # within 3 x 0.01
    assert not by["intensity"].ok and "missing" in by["intensity"].note
    assert not by["counts.scored"].ok and not by["counts.failed"].ok
    further = result(metrics={"closed_accuracy": 0.5, "coverage": 0.8 + 0.031, "intensity": 0.4})
    by = {d.metric: d for d in R.compare_to_baseline("k", further, base, tol)}
    assert not by["coverage"].ok and by["coverage"].delta == pytest.approx(0.031)
    assert "no tolerances" in R.compare_to_baseline("other", base, base, tol)[0].note


def test_workdir_is_emptied_only_when_medbench_made_it(tmp_path):
    work = R.fresh_workdir(tmp_path / "w")
    (work / "stale.json").write_text("{}")
    R.fresh_workdir(work)
    assert not (work / "stale.json").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        R.fresh_workdir(foreign)
    assert (foreign / "keep.txt").exists()


# ---- the committed baselines -------------------------------------------------------------------
def test_committed_baselines_are_exactly_the_suite_with_provenance():
    tol = json.loads((BASELINES / "tolerances.json").read_text())
    suite = R.Suite()
    keys = {e.key for e in suite.entries()}
    assert set(tol["entries"]) == keys
    for entry in suite.entries():
        res = json.loads(R.baseline_path(BASELINES, entry).read_text())
        b = res["baseline"]
        assert b["key"] == entry.key and b["suite"] == json.loads(json.dumps(suite.record()))
        assert b["command"] == R.command_line(entry, suite)
        assert res["limit"] == suite.limits[entry.task] and res["seed"] == suite.seed
        assert res["fingerprint"] and res["versions"]["torch"]
        assert res["counts"]["failed"] == 0 and res["counts"]["scored"] == suite.limits[entry.task]
        assert set(tol["entries"][entry.key]["metrics"]) == set(R.numeric_metrics(res))
        assert tol["entries"][entry.key]["sampling"] == R.is_sampling(res)
    assert sorted(p.parent for p in BASELINES.glob("*/*/results.json")) == sorted(
        R.baseline_path(BASELINES, e).parent for e in suite.entries())


def test_check_passes_unchanged_and_fails_on_a_perturbed_hyperparameter(tmp_path, capsys):
    """PAI with its paper α=0.2 reproduces its baseline; α=3.0 (a much stronger attention edit) fails.

    (α=1.0 happens to change no answer among these 48 questions.)
    """
    entry = "phantom-vqa/none+pai"
    args = ["-q", "baselines", "check", "--baselines", str(BASELINES), "--only", entry]
    assert cli([*args, "--workdir", str(tmp_path / "same")]) == 0
    assert "within tolerance" in capsys.readouterr().out
    assert cli([*args, "--workdir", str(tmp_path / "perturbed"), "--set", f"{entry}:alpha=3.0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "fingerprint differs" in out and R.REGENERATE in out

    # `medbench compare` on the two phantom result sets: the 44 baselines against the one rerun.
    from medbench.compare import compare

    rows = compare(str(BASELINES), str(tmp_path / "perturbed" / "runs"))
    pai = [r for r in rows if r["task"] == "phantom-vqa" and r["tuning"] == "none" and r["decoding"] == "pai"]
    metrics = {r["metric"]: r for r in pai if r["kind"] == "metric"}
    fields = {r["field"]: r for r in pai if r["kind"] == "field"}
    assert metrics["closed_accuracy"]["a"] != metrics["closed_accuracy"]["b"]
    assert (fields["method_args.decoding.alpha"]["a"], fields["method_args.decoding.alpha"]["b"]) == (0.2, 3.0)
    only_a = [r for r in rows if r["kind"] == "metric" and r["note"] == "only in A"]
    assert {(r["task"], r["tuning"], r["decoding"]) for r in only_a} == {
        (e.task, e.tuning, e.decoding) for e in R.Suite().entries() if e.key != "phantom-vqa/none+pai"}


def test_check_fails_on_a_perturbed_sampling_method_too(tmp_path, capsys):
    """Nucleus at top-p 0.9 vs a much flatter temperature: beyond even the bootstrap half-widths."""
    entry = "phantom-report/none+nucleus"
    code = cli(["-q", "baselines", "check", "--baselines", str(BASELINES), "--only", entry,
                "--workdir", str(tmp_path), "--set", f"{entry}:temperature=3.0"])
    assert code == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_set_and_only_arguments_are_clear(tmp_path, capsys):
    base = ["baselines", "check", "--baselines", str(BASELINES), "--workdir", str(tmp_path)]
    assert cli([*base, "--set", "phantom-vqa/none+nope:alpha=1"]) == 2
    assert "names no suite entry" in capsys.readouterr().err
    assert cli([*base, "--set", "phantom-vqa/none+pai"]) == 2
    assert "ENTRY:NAME=VALUE" in capsys.readouterr().err
    assert cli([*base, "--only", "no-such-task/*"]) == 2
    assert "no suite entry matches" in capsys.readouterr().err
