"""Percentile-bootstrap confidence intervals (spec: percentile, 95 %, recorded seed).

Means of per-sample scores use B = 1000 resamples; corpus metrics are recomputed on each resample
with B = 200. Every resample draws from ``numpy.random.default_rng(seed)`` one resample at a time
(``rng.integers(0, n, size=n)``), so an interval is reproducible from (values, B, seed) alone and
two metrics over the same n rows with the same seed see the same resamples (paired). ``groups``
switches to a cluster bootstrap: whole groups (e.g. all questions on one image) are resampled.

An empty input gives ``None`` (never NaN); a single value gives the degenerate interval
``low == high == value``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "METHOD",
    "bootstrap_corpus",
    "bootstrap_mean",
    "bootstrap_paired_diff",
    "interval_from_stats",
    "mean_and_ci",
    "percentile_interval",
    "resample_indices",
]

METHOD = "percentile-bootstrap"
T = TypeVar("T")


def resample_indices(
    n: int, n_resamples: int, seed: int, groups: Sequence[Hashable] | None = None
) -> Iterator[np.ndarray]:
    """Yield ``n_resamples`` index arrays drawn with replacement from ``range(n)``.

    With ``groups`` (one label per item) whole groups are drawn with replacement and every member
    of a drawn group is included, so resample sizes vary.
    """
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_resamples):
            yield rng.integers(0, n, size=n)
        return
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} items")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    blocks = [np.asarray(v, dtype=np.int64) for v in members.values()]
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(blocks), size=len(blocks))
        yield np.concatenate([blocks[j] for j in drawn])


def percentile_interval(stats: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap statistics (linear interpolation)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arr = np.asarray(stats, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("bootstrap statistics must be a non-empty set of finite numbers")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(arr, [tail, 100.0 - tail])
    return float(low), float(high)


def interval_from_stats(
    stats: Sequence[float] | np.ndarray, level: float, n_resamples: int, seed: int, **extra: Any
) -> dict[str, Any]:
    """The recorded CI dict ``{low, high, level, method, n_resamples, seed, **extra}``."""
    low, high = percentile_interval(stats, level)
    return {
        "low": low,
        "high": high,
        "level": level,
        "method": METHOD,
        "n_resamples": n_resamples,
        "seed": seed,
        **extra,
    }


def _finite_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError("bootstrap input contains NaN or inf")
    return arr


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Any] | None:
    """Percentile-bootstrap CI of the mean of ``values``; ``None`` when there are none.

    Returns ``{low, high, level, method, n_resamples, seed}`` (plus ``unit: "group"`` for a
    cluster bootstrap).
    """
    arr = _finite_array(values)
    if arr.size == 0:
        return None
    stats = np.empty(n_resamples, dtype=np.float64)
    for b, idx in enumerate(resample_indices(arr.size, n_resamples, seed, groups)):
        stats[b] = arr[idx].mean()
    extra = {"unit": "group"} if groups is not None else {}
    return interval_from_stats(stats, level, n_resamples, seed, **extra)


def mean_and_ci(
    values: Sequence[float] | np.ndarray, **kwargs: Any
) -> tuple[float | None, dict[str, Any] | None]:
    """``(mean, bootstrap_mean(values, **kwargs))``; ``(None, None)`` for no values."""
    arr = _finite_array(values)
    if arr.size == 0:
        return None, None
    return math.fsum(arr.tolist()) / arr.size, bootstrap_mean(arr, **kwargs)


def bootstrap_corpus(
    fn: Callable[[list[T]], float],
    items: Sequence[T],
    n_resamples: int = 200,
    seed: int = 0,
    *,
    level: float = 0.95,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Any] | None:
    """Percentile-bootstrap CI of a corpus statistic ``fn(items)``; ``None`` for no items.

    ``fn`` receives each resample as a list (duplicates included, in drawn order) and must
    return a finite float.
    """
    if len(items) == 0:
        return None
    stats = np.empty(n_resamples, dtype=np.float64)
    for b, idx in enumerate(resample_indices(len(items), n_resamples, seed, groups)):
        value = float(fn([items[i] for i in idx]))
        if not math.isfinite(value):
            raise ValueError(f"corpus statistic is not finite on resample {b}: {value}")
        stats[b] = value
    extra = {"unit": "group"} if groups is not None else {}
    return interval_from_stats(stats, level, n_resamples, seed, **extra)


def bootstrap_paired_diff(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | None, dict[str, Any] | None]:
    """Mean of ``a - b`` over shared ids and its paired-resample CI (for method comparisons).

    The ids of ``a`` and ``b`` must be the same set; otherwise ``ValueError``.
    """
    if set(a) != set(b):
        raise ValueError(f"paired bootstrap needs the same ids on both sides ({len(set(a) ^ set(b))} differ)")
    ids = sorted(a)
    diff = np.asarray([a[i] - b[i] for i in ids], dtype=np.float64)
    return mean_and_ci(diff, n_resamples=n_resamples, seed=seed, level=level)
