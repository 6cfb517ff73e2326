"""Data-parallel training over an initialised ``torch.distributed`` process group.

Every rank holds the same parameters and computes the same global batch order; rank ``r`` of
``N`` runs positions ``r, r + N, …`` of each global batch. Gradients are summed across ranks with
``all_reduce`` (in flat buckets) and the local loss is scaled so that the sum equals the gradient
of the single-process loss over the whole batch: identical optimizer steps on every rank, equal to
a one-process run up to float summation order. CPU tensors use the default (gloo) group; CUDA
tensors use an NCCL group created on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

BUCKET = 1 << 24  # elements per all_reduce
T = TypeVar("T")


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the training group (``world_size == 1``: no communication)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local(self, batch: list[int]) -> list[int]:
        """This rank's share of a global batch (may be empty when the batch is smaller than N)."""
        return batch[self.rank :: self.world_size] if self.active else batch

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum of ``tensor`` over ranks."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def sync_grads(self, params: list[torch.nn.Parameter], bucket_size: int = BUCKET) -> None:
        """Sum every parameter's gradient over ranks (a missing gradient counts as zeros)."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        start = 0
        while start < len(params):
            bucket, size = [], 0
            while start < len(params) and (not bucket or size + params[start].numel() <= bucket_size):
                bucket.append(params[start])
                size += params[start].numel()
                start += 1
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            self.all_sum(flat)
            offset = 0
            for p in bucket:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def current(device: torch.device | str) -> DataParallel:
    """The running process group (from torchrun / accelerate launch), else a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DataParallel()
    group = None
    if torch.device(device).type == "cuda":
        if torch.device(device).index is not None:
            torch.cuda.set_device(torch.device(device))
        group = _nccl_group()
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size(), group=group)


_NCCL: list[Any] = []


def _nccl_group() -> Any:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return None
    if not _NCCL:
        _NCCL.append(dist.new_group(backend="nccl"))
    return _NCCL[0]


def is_main_process() -> bool:
    """True outside a process group and on rank 0 inside one (the rank that writes files)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def sync_point() -> None:
    """A barrier over the default group when one is running; nothing otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def world_size() -> int:
    """Processes in the running group (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def main_first(work: Callable[[], T], *, is_main: bool | None = None, wait: Callable[[], None] | None = None) -> T:
    """Rank 0 runs ``work`` first (filling a shared cache, training an adapter), then the others run it.

    By default the ranks are those of the running process group and meet at a barrier. ``is_main``
    and ``wait`` give another rendezvous: the other ranks call ``wait()`` (e.g. poll for a file
    rank 0 writes) before they run ``work``; rank 0 then does not wait for them.
    """
    if wait is None:
        if not is_main_process():
            sync_point()
            return work()
        out = work()
        sync_point()
        return out
    if not is_main:
        wait()
    return work()
