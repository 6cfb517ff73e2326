"""DeepSpeed ZeRO (stages 1 and 2) training through accelerate's DeepSpeed integration.

Used when ``accelerate launch`` was given a DeepSpeed configuration (it sets
``ACCELERATE_USE_DEEPSPEED``). The DeepSpeed configuration contributes the sharding (ZeRO stage,
optimizer offload) and precision; medbench's method arguments keep the training hyperparameters
(batch size, learning rate and schedule, gradient clipping), so a run's fingerprint means the same
with or without DeepSpeed. Each rank runs its slice of every global batch, as in :mod:`medbench.ddp`;
DeepSpeed averages gradients over ranks, so the local loss is scaled by the world size to make a
step equal the one-process step over the whole batch.

The optimizer state is partitioned over ranks: a step checkpoint holds one partition file per rank
(the base optimizer's state over that rank's flat fp32 partition, and the partition itself), so a
ZeRO checkpoint resumes only with the same number of processes and the same stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from medbench.errors import ConfigError

log = logging.getLogger("medbench")

SUPPORTED_STAGES = (1, 2)


def requested(env: Mapping[str, str] | None = None) -> bool:
    """True when the launcher asked for DeepSpeed (``accelerate launch`` with a DeepSpeed config)."""
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in ("1", "true", "yes")


def process_group_backend(env: Mapping[str, str] | None = None) -> str:
    """The default group's backend: DeepSpeed's collectives on CUDA tensors need NCCL, the rest gloo."""
    if requested(env) and torch.cuda.is_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    """Fill ``config[key]`` with medbench's value; say so when the user's file named another."""
    old = config.get(key, "auto")
    if old not in ("auto", None, value):
        log.warning("DeepSpeed config %s=%r replaced by medbench's %r (training hyperparameters come from "
                    "--method-args)", key, old, value)
    config[key] = value


def launched_stage() -> int:
    """The ZeRO stage the launcher's DeepSpeed config asks for; refuses what medbench cannot train with."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("accelerate launch asked for DeepSpeed but deepspeed is not installed (see the README, "
                          "\"Multi-GPU training\", for the install command)") from None
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()  # reads the launcher's environment, as Accelerator() will
    stage = int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", plugin.zero_stage))
    if stage not in SUPPORTED_STAGES:
        raise ConfigError(
            f"DeepSpeed ZeRO stage {stage} is not supported: medbench trains with stages 1 and 2 (optimizer "
            "state and gradients sharded; the frozen backbone stays whole on every rank). For a backbone "
            "that does not fit one GPU, evaluate with --device-map auto; for plain data parallelism use "
            "torchrun or accelerate launch without a DeepSpeed config")
    return stage


@dataclass
class ZeroTrainer:
    """A model and optimizer handed to accelerate/DeepSpeed; forward, backward+step, partition state."""

    accelerator: Any
    engine: Any
    stage: int

    @classmethod
    def prepare(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, micro_batch: int,
                world_size: int, max_grad_norm: float) -> ZeroTrainer:
        """Wrap ``model``/``optimizer`` (ZeRO stage from the launcher's config; 1 or 2)."""
        from accelerate import Accelerator

        stage = launched_stage()
        accelerator = Accelerator()
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        _set(config, "train_micro_batch_size_per_gpu", micro_batch)
        _set(config, "train_batch_size", micro_batch * world_size)
        _set(config, "gradient_accumulation_steps", 1)
        _set(config, "gradient_clipping", max_grad_norm)
        engine, _ = accelerator.prepare(model, optimizer)
        log.info("DeepSpeed ZeRO stage %d over %d process(es)", stage, world_size)
        return cls(accelerator, engine, stage)

    @property
    def zero_optimizer(self) -> Any:
        return self.engine.optimizer

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer DeepSpeed steps over this rank's partition (a scheduler drives its lr)."""
        return self.engine.optimizer.optimizer

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.engine(**inputs)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Reduce-scatter gradients, clip to the global norm, step the optimizer, zero the gradients."""
        self.accelerator.backward(loss)

    def partition_state(self) -> dict[str, Any]:
        """This rank's optimizer partition: tensors and plain values only (``weights_only`` loadable)."""
        zero = self.zero_optimizer
        return {
            "stage": self.stage,
            "base_optimizer": self.base_optimizer.state_dict(),
            "fp32_partitions": [t.detach().cpu().clone() for t in zero.single_partition_of_fp32_groups],
            "loss_scale": float(zero.loss_scale),
        }

    def load_partition_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`partition_state` (stage and process count are checked against ``meta.json`` first)."""
        zero = self.zero_optimizer
        self.base_optimizer.load_state_dict(state["base_optimizer"])
        with torch.no_grad():
            for mine, saved in zip(zero.single_partition_of_fp32_groups, state["fp32_partitions"], strict=True):
                if mine.shape != saved.shape:
                    raise ConfigError("the saved ZeRO partition does not match this run's partitioning")
                mine.copy_(saved.to(mine.device, mine.dtype))
        zero.loss_scale = state["loss_scale"]
