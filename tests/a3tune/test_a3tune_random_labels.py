"""The ``labels=random`` control: the weak labels' segments, moved to random places."""

from __future__ import annotations

import numpy as np

from medbench.methods.a3tune.weak_labels import LabelSet, moved_segment, random_labels


def _segment(cells: list[tuple[int, int]], grid: int = 8) -> np.ndarray:
    out = np.zeros((grid, grid), dtype=bool)
    for r, c in cells:
        out[r, c] = True
    return out.reshape(-1)


def _box(segment: np.ndarray, grid: int = 8) -> np.ndarray:
    cells = segment.reshape(grid, grid)
    rows, cols = np.nonzero(cells)
    return cells[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def test_a_moved_segment_keeps_shape_and_size_and_lands_anywhere():
    ell = _segment([(1, 1), (2, 1), (2, 2)])
    places = set()
    for draw in range(400):
        moved = moved_segment(ell, 8, np.random.default_rng(draw))
        assert moved.sum() == 3 and np.array_equal(_box(moved), _box(ell))
        rows, cols = np.nonzero(moved.reshape(8, 8))
        places.add((rows.min(), cols.min()))
    assert places == {(r, c) for r in range(7) for c in range(7)}  # every place a 2×2 box fits
    whole = np.ones(64, dtype=bool)
    assert np.array_equal(moved_segment(whole, 8, np.random.default_rng(0)), whole)
    assert not moved_segment(np.zeros(64, dtype=bool), 8, np.random.default_rng(0)).any()


def test_random_labels_keep_counts_and_sizes_and_follow_the_seed():
    weak = LabelSet({"a": np.stack([_segment([(0, 0)]), _segment([(3, 3), (3, 4), (4, 3), (4, 4)])]),
                     "b": np.zeros((0, 64), dtype=bool),
                     "c": np.stack([_segment([(7, 7), (6, 7)])])}, "weak", "fp")
    one, again, other = random_labels(weak, 8, 0), random_labels(weak, 8, 0), random_labels(weak, 8, 1)
    assert one.source == "random" and one.label_fp == "fp" and one.unlabelled == 1
    for sid, segments in weak.grids.items():
        assert one.grids[sid].shape == segments.shape
        assert [s.sum() for s in one.grids[sid]] == [s.sum() for s in segments]
        assert np.array_equal(one.grids[sid], again.grids[sid])
    moved = [sid for sid in ("a", "c") if not np.array_equal(one.grids[sid], weak.grids[sid])]
    assert moved and any(not np.array_equal(one.grids[s], other.grids[s]) for s in ("a", "c"))


def test_labels_random_trains_on_moved_weak_segments(random_backbone, tmp_path):
    """``labels=random`` builds the weak labels, then moves them; its fingerprint is its own."""
    from medbench.methods.a3tune.method import A3Tune
    from medbench.tasks.phantom import PhantomVQA

    task = PhantomVQA(n_images={"train": 6, "test": 2})
    common = {"segmenter": "felzenszwalb", "scorer": "random", "lam": 0.5, "top_k": 2}
    weak, control = A3Tune(labels="weak", **common), A3Tune(labels="random", **common)
    assert control.label_spec(task, control.resolved(random_backbone, task))["labels"] == "random"
    assert control.fingerprint(random_backbone, task, 0) != weak.fingerprint(random_backbone, task, 0)
    samples = task.load(task.train_split)[:4]
    res = weak.resolved(random_backbone, task)
    weak_set = weak.build_labels(random_backbone, task, samples, res, progress=False)
    moved = control.build_labels(random_backbone, task, samples, res, progress=False, seed=3)
    assert moved.source == "random" and set(moved.grids) == set(weak_set.grids)
    for sid in weak_set.grids:
        assert [g.sum() for g in moved.grids[sid]] == [g.sum() for g in weak_set.grids[sid]]
    assert any(not np.array_equal(moved.grids[s], weak_set.grids[s]) for s in weak_set.grids)
