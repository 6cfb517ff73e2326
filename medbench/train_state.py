"""Step checkpoints of a training run: save every N steps, resume exactly, survive SIGKILL.

A checkpoint is a folder ``state/step-NNNNNNNN/`` holding ``trainable.safetensors`` (every
trainable parameter by name), ``optim.pt`` (optimizer and scheduler state dicts, read back with
``torch.load(weights_only=True)``), one ``rng-rank{r}.json`` per process (python, torch and CUDA
generator states), under DeepSpeed ZeRO one ``optim-rank{r}.pt`` per process (that rank's
optimizer partition; ``optim.pt`` then holds the scheduler only) and, written last, ``meta.json``
(step, shuffle-order remainder and generator state, loss curve, world size, run key, the extra
loss's statistics, the ZeRO stage). Every file is written
atomically; a folder without a readable ``meta.json`` of the same key is an unfinished write and
is ignored, then removed. After a new checkpoint is complete the older ones are removed, so a kill
at any point leaves either the previous or the new checkpoint intact.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medbench.atomic import atomic_write_bytes, atomic_write_json

log = logging.getLogger("medbench")

STATE_DIR = "state"
META = "meta.json"
PARAMS = "trainable.safetensors"
OPTIM = "optim.pt"


def partition_file(folder: Path, rank: int) -> Path:
    """One rank's ZeRO optimizer partition in a step folder."""
    return Path(folder) / f"optim-rank{rank}.pt"


@dataclass
class TrainState:
    """Everything besides the parameters that a resumed run needs to continue step for step."""

    step: int
    order: list[int]
    order_rng: Any
    losses: list[float] = field(default_factory=list)
    world_size: int = 1
    extra: Any = None
    zero_stage: int | None = None


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def _tensor_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _b64_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _py_state(state: Any) -> Any:
    """``random.getstate()`` as JSON (nested tuples become lists)."""
    return [state[0], list(state[1]), state[2]]


def _from_py_state(obj: Any) -> Any:
    return (obj[0], tuple(obj[1]), obj[2])


def rng_snapshot() -> dict[str, Any]:
    """This process's python, torch and CUDA generator states (JSON-ready)."""
    snap: dict[str, Any] = {"python": _py_state(random.getstate()), "torch": _tensor_b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snap["cuda"] = [_tensor_b64(s) for s in torch.cuda.get_rng_state_all()]
    return snap


def restore_rng(snap: dict[str, Any]) -> None:
    random.setstate(_from_py_state(snap["python"]))
    torch.set_rng_state(_b64_tensor(snap["torch"]))
    if snap.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_b64_tensor(s) for s in snap["cuda"]])


def write_rng(folder: Path, rank: int) -> None:
    atomic_write_json(Path(folder) / f"rng-rank{rank}.json", rng_snapshot())


def write_partition(folder: Path, rank: int, partition: dict[str, Any]) -> None:
    """This rank's ZeRO optimizer partition (tensors and plain values)."""
    buf = io.BytesIO()
    torch.save(partition, buf)
    atomic_write_bytes(partition_file(folder, rank), buf.getvalue())


def write_checkpoint(root: Path, key: str, state: TrainState, named: dict[str, torch.Tensor],
                     optimizer: torch.optim.Optimizer, scheduler: Any) -> Path:
    """Parameters, optimizer/scheduler and ``meta.json`` (last) into a new step folder; prune older ones.

    Call after every rank has written its ``rng-rank{r}.json`` (and, under ZeRO — ``state.zero_stage``
    set — its optimizer partition, so ``optim.pt`` holds the scheduler only) into :func:`step_dir`.
    """
    from safetensors.torch import save

    folder = step_dir(root, state.step)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / PARAMS, save({k: v.detach().cpu().contiguous() for k, v in named.items()}))
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict() if state.zero_stage is None else None,
                "scheduler": scheduler.state_dict()}, buf)
    atomic_write_bytes(folder / OPTIM, buf.getvalue())
    atomic_write_json(folder / META, {
        "key": key, "step": state.step, "order": state.order, "order_rng": _py_state(state.order_rng),
        "losses": state.losses, "world_size": state.world_size, "extra": state.extra,
        "zero_stage": state.zero_stage,
    })
    for old in Path(root).glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _read_meta(folder: Path, key: str) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return meta if meta.get("key") == key and (folder / PARAMS).exists() and (folder / OPTIM).exists() else None


def latest(root: Path, key: str) -> Path | None:
    """The newest complete checkpoint of this run key, or ``None``."""
    folders = sorted(Path(root).glob("step-*"), reverse=True) if Path(root).is_dir() else []
    for folder in folders:
        if _read_meta(folder, key) is not None:
            return folder
    return None


def load_checkpoint(folder: Path, key: str, named: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: Any, rank: int, zero: Any = None) -> TrainState:
    """Copy the saved parameters into ``named`` and restore optimizer, scheduler and this rank's RNG.

    ``zero`` is the run's :class:`medbench.zero.ZeroTrainer` under DeepSpeed: this rank's partition
    file is loaded into it instead of ``optimizer``.
    """
    from safetensors.torch import load_file

    from medbench.errors import ConfigError

    meta = _read_meta(folder, key)
    if meta is None:
        raise ValueError(f"{folder} is not a complete training checkpoint of this run")
    saved_stage = meta.get("zero_stage")
    stage = None if zero is None else zero.stage
    if saved_stage != stage or (stage is not None and meta["world_size"] != _world()):
        written = "without DeepSpeed" if saved_stage is None else f"under ZeRO stage {saved_stage}"
        now = "without DeepSpeed" if stage is None else f"under ZeRO stage {stage}"
        raise ConfigError(
            f"{folder} was written {written} by {meta['world_size']} process(es); this run trains {now} with "
            f"{_world()}: a ZeRO optimizer partition resumes only with the same stage and process count. "
            f"Relaunch that way, or remove {Path(folder).parent} to start the training afresh")
    saved = load_file(str(folder / PARAMS))
    if set(saved) != set(named):
        raise ValueError(f"{folder}: saved parameters do not match the model's trainable parameters")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(saved[name].to(param.device, param.dtype))
    blob = torch.load(folder / OPTIM, map_location="cpu", weights_only=True)
    if zero is None:
        optimizer.load_state_dict(blob["optimizer"])
    else:
        zero.load_partition_state(torch.load(partition_file(folder, rank), map_location="cpu", weights_only=True))
    scheduler.load_state_dict(blob["scheduler"])
    rng = folder / f"rng-rank{rank}.json"
    if meta["world_size"] == _world() and rng.exists():
        restore_rng(json.loads(rng.read_text()))
    else:
        log.warning("resuming with %d process(es) from a checkpoint of %d: dropout draws start afresh",
                    _world(), meta["world_size"])
        torch.manual_seed(meta["step"] * 1009 + rank)
    return TrainState(step=meta["step"], order=list(meta["order"]), order_rng=_from_py_state(meta["order_rng"]),
                      losses=[float(x) for x in meta["losses"]], world_size=meta["world_size"],
                      extra=meta.get("extra"), zero_stage=saved_stage)


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def clean_unfinished(root: Path, keep: Path | None) -> None:
    """Remove step folders other than ``keep`` (unfinished writes or another run key)."""
    for folder in Path(root).glob("step-*") if Path(root).is_dir() else []:
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


def remove(root: Path) -> None:
    """Drop the step checkpoints (after the adapter is complete)."""
    shutil.rmtree(root, ignore_errors=True)
