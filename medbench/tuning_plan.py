"""The tuning side of a run: which adapter it needs (method, training fingerprint, checkpoint
folder — computed once) and getting it (train, or reuse the finished checkpoint of that fingerprint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench import ddp, train_state
from medbench.atomic import atomic_write_text
from medbench.registry import METHODS
from medbench.run_config import Resolved, RunConfig, model_dir_name

log = logging.getLogger("medbench")


@dataclass(frozen=True)
class TuningPlan:
    """One adapter: the tuning method instance, its training fingerprint and its checkpoint folder."""

    method: Any
    fingerprint: str
    checkpoint: Path

    @property
    def marker(self) -> Path:
        """Written (holding the fingerprint) once the adapter is complete."""
        return self.checkpoint / "COMPLETE"

    def complete(self) -> bool:
        return self.marker.exists() and self.marker.read_text().strip() == self.fingerprint

    def prepare(self, backbone: Any, task: Any, seed: int, device: str) -> tuple[Any, dict]:
        """Train (or reuse by fingerprint) the adapter and attach it.

        Training resumes from the step checkpoints in ``<checkpoint>/state/`` and removes them once
        the ``COMPLETE`` marker is written. Inside a process group every rank trains (data-parallel)
        and rank 0 writes the files.
        """
        name = self.method.name
        if self.complete():
            log.info("reusing %s checkpoint %s", name, self.checkpoint)
            if ddp.is_main_process():
                train_state.remove(self.checkpoint / train_state.STATE_DIR)  # left by a kill during the clean-up
        else:
            log.info("training %s on %s (%s)", name, task.name, self.checkpoint)
            self.method.train(backbone, task, self.checkpoint, seed, device)
            if ddp.is_main_process():
                atomic_write_text(self.marker, self.fingerprint)
                train_state.remove(self.checkpoint / train_state.STATE_DIR)
            ddp.sync_point()
        return self.method.apply(backbone, self.checkpoint), {
            "checkpoint": str(self.checkpoint), "fingerprint": self.fingerprint,
            "params": self.method.resolved_args()}


def plan_tuning(cfg: RunConfig, res: Resolved, backbone: Any, task: Any) -> TuningPlan | None:
    """The adapter this configuration needs (``None`` for ``tuning none``)."""
    if res.tuning == "none":
        return None
    method = METHODS.get(res.tuning)(**res.tuning_args)
    fp = method.fingerprint(backbone, task, cfg.seed)
    ckpt = Path(cfg.checkpoint_dir) / model_dir_name(cfg.model) / task.name / f"{res.tuning}-{fp[:16]}"
    return TuningPlan(method, fp, ckpt)


def prepare_tuning(cfg: RunConfig, res: Resolved, backbone: Any, task: Any, device: str) -> tuple[Any, dict]:
    """Plan and prepare in one call: ``(backbone with the adapter, tuning record)``; ``{}`` for none."""
    plan = plan_tuning(cfg, res, backbone, task)
    return (backbone, {}) if plan is None else plan.prepare(backbone, task, cfg.seed, device)


def tuning_checkpoint(cfg: RunConfig, res: Resolved, backbone: Any, task: Any) -> Path:
    """Where ``prepare_tuning`` keeps the adapter of this configuration."""
    plan = plan_tuning(cfg, res, backbone, task)
    assert plan is not None, "tuning none has no checkpoint"
    return plan.checkpoint
