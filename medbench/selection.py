"""Which samples a run decodes: the evaluation split (``--split``) and ``--limit``.

Shared by the runner (planning a run) and scoring/show (reopening one), so that a run
directory is always read back over exactly the samples it decoded.
"""

from __future__ import annotations

from typing import Any

from medbench.errors import ConfigError
from medbench.types import Sample


def eval_split(task: Any, split: str | None) -> str:
    """The split a run decodes: the task's test split, or ``split`` (e.g. ``val`` to choose
    hyperparameters without looking at test). The training split is refused: a tuned model scored
    on its own training data measures memory, not the method."""
    if split is None or split == task.eval_split:
        return task.eval_split
    splits = tuple(getattr(task, "splits", ()))
    if split not in splits:
        raise ConfigError(f"task {task.name} has no split {split!r}; its splits are {', '.join(splits)}")
    if split == task.train_split or split == "pretrain":
        raise ConfigError(f"--split {split}: that is a split methods are trained on; evaluate on "
                          f"{', '.join(s for s in splits if s not in (task.train_split, 'pretrain'))}")
    return split


def select_samples(task: Any, limit: int | None, split: str | None = None) -> list[Sample]:
    samples = sorted(task.load(eval_split(task, split)), key=lambda s: s.id)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {task.name} has duplicate sample ids")
    check_limit(limit)
    return samples if limit is None else samples[:limit]


def check_limit(limit: int | None) -> None:
    """``--limit`` is a positive sample count; leaving it out (``None``) means every sample."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be at least 1 (leave --limit out for every sample), got {limit!r}")
