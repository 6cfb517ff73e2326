"""Percentile bootstrap: recorded seed, empty and single inputs, clusters, corpus statistics."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medbench.metrics import MetricResult
from medbench.metrics.bootstrap import (
    bootstrap_corpus,
    bootstrap_mean,
    bootstrap_paired_diff,
    mean_and_ci,
    percentile_interval,
    resample_indices,
)


def test_empty_gives_none() -> None:
    assert bootstrap_mean([]) is None
    assert mean_and_ci([]) == (None, None)
    assert bootstrap_corpus(lambda xs: 0.0, []) is None
    result = MetricResult.from_per_sample("x", {})
    assert result.value is None and result.n == 0


def test_single_value_is_degenerate() -> None:
    ci = bootstrap_mean([0.3], seed=5)
    assert ci == {
        "low": 0.3,
        "high": 0.3,
        "level": 0.95,
        "method": "percentile-bootstrap",
        "n_resamples": 1000,
        "seed": 5,
    }


def test_reproducible_and_seed_dependent() -> None:
    values = np.random.default_rng(0).random(50)
    a = bootstrap_mean(values, seed=1)
    assert a == bootstrap_mean(values, seed=1)
    assert a != bootstrap_mean(values, seed=2)
    assert a["low"] < values.mean() < a["high"]


def test_two_point_interval() -> None:
    # Resample means of [0, 1] are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4.
    ci = bootstrap_mean([0.0, 1.0], n_resamples=2000, seed=0)
    assert (ci["low"], ci["high"]) == (0.0, 1.0)
    assert bootstrap_mean([0.0, 1.0], level=0.4, seed=0)["low"] == 0.5


def test_non_finite_input_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([0.1, float("nan")])
    with pytest.raises(ValueError, match="level"):
        percentile_interval([0.1], level=1.0)


def test_corpus_with_mean_matches_mean_bootstrap() -> None:
    values = list(np.random.default_rng(1).random(20))
    corpus = bootstrap_corpus(lambda xs: float(np.mean(xs)), values, n_resamples=300, seed=4)
    mean = bootstrap_mean(values, n_resamples=300, seed=4)
    assert corpus["low"] == pytest.approx(mean["low"]) and corpus["high"] == pytest.approx(mean["high"])
    assert bootstrap_corpus(max, [1.0, 2.0, 3.0], seed=0)["high"] == 3.0


def test_corpus_rejects_non_finite_statistic() -> None:
    with pytest.raises(ValueError, match="not finite"):
        bootstrap_corpus(lambda xs: float("nan"), [1.0])


def test_group_bootstrap_resamples_whole_groups() -> None:
    idx = list(resample_indices(4, 50, seed=0, groups=["a", "a", "b", "b"]))
    for draw in idx:
        assert sorted(draw.tolist()) in ([0, 0, 1, 1], [0, 1, 2, 3], [2, 2, 3, 3])
    ci = bootstrap_mean([0.0, 0.0, 1.0, 1.0], groups=["a", "a", "b", "b"], seed=0)
    assert ci["unit"] == "group" and (ci["low"], ci["high"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="labels"):
        next(resample_indices(3, 1, seed=0, groups=["a"]))


def test_paired_difference() -> None:
    a = {"x": 1.0, "y": 0.0, "z": 1.0}
    mean, ci = bootstrap_paired_diff(a, a)
    assert mean == 0.0 and ci["low"] == ci["high"] == 0.0
    mean, ci = bootstrap_paired_diff(a, {"x": 0.0, "y": 0.0, "z": 0.0}, seed=1)
    assert mean == pytest.approx(2 / 3) and 0.0 <= ci["low"] <= ci["high"] <= 1.0
    with pytest.raises(ValueError, match="same ids"):
        bootstrap_paired_diff(a, {"x": 1.0})


# ---- independent references: np.percentile on resamples drawn here ------------------------------
def resampled_means(values: list[float], n_resamples: int, seed: int) -> np.ndarray:
    """The documented protocol, written out: ``default_rng(seed)``, one ``integers(0, n, n)`` per resample."""
    arr = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return np.asarray([arr[rng.integers(0, arr.size, size=arr.size)].mean() for _ in range(n_resamples)])


def test_percentile_interval_cuts_half_the_missing_mass_from_each_tail() -> None:
    stats = np.arange(101.0)  # the p-th percentile of 0, 1, …, 100 is p
    assert percentile_interval(stats, 0.95) == pytest.approx((2.5, 97.5))
    assert percentile_interval(stats, 0.90) == pytest.approx((5.0, 95.0))
    assert percentile_interval(stats, 0.50) == pytest.approx((25.0, 75.0))


def test_bootstrap_mean_is_np_percentile_of_the_resampled_means() -> None:
    values = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    means = resampled_means(values, 500, seed=3)
    low, high = np.percentile(means, [2.5, 97.5])
    assert (np.percentile(means, 5.0), np.percentile(means, 95.0)) != (low, high)  # the tails differ here
    ci = bootstrap_mean(values, n_resamples=500, seed=3)
    assert (ci["low"], ci["high"]) == pytest.approx((low, high), abs=1e-12)
    ci90 = bootstrap_mean(values, n_resamples=500, seed=3, level=0.9)
    assert (ci90["low"], ci90["high"]) == pytest.approx(tuple(np.percentile(means, [5.0, 95.0])), abs=1e-12)
    _, paired = bootstrap_paired_diff({f"s{i:02d}": v for i, v in enumerate(values)},
                                      {f"s{i:02d}": 0.0 for i in range(len(values))}, n_resamples=500, seed=3)
    assert (paired["low"], paired["high"]) == pytest.approx((low, high), abs=1e-12)


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is required for the PTB tokenizer")
def test_report_rouge_l_ci_is_the_percentile_of_resampled_per_sample_means() -> None:
    pytest.importorskip("pycocoevalcap")
    from medbench.metrics.report import ReportMetrics

    # ROUGE-L is 1 for a prediction equal to its reference and 0 for an empty one
    texts = ["the heart size is normal", "no pleural effusion", "mild cardiomegaly", "stable chest",
             "clear lungs", "no pneumothorax"]
    rows = [{"id": f"s{i}", "answer": t, "prediction": t if i < 2 else ""} for i, t in enumerate(texts)]
    got = ReportMetrics(meteor=False, n_resamples=200, seed=5).compute(rows)["rouge_l"]
    assert [got.per_sample[f"s{i}"] for i in range(6)] == pytest.approx([1, 1, 0, 0, 0, 0])
    means = resampled_means([1, 1, 0, 0, 0, 0], 200, seed=5)
    assert (got.ci["low"], got.ci["high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert got.ci["low"] < 1 / 3 < got.ci["high"]
