"""Data-parallel evaluation: rank from the launcher's environment, per-rank files, merge on rank 0.

Rank ``r`` of ``N`` decodes the samples whose position in id order is ``r mod N`` and appends them
to ``predictions.rank{r}.jsonl`` (same header and fingerprint as a single-process run, plus its
rank and world size), then leaves a completion marker. Rank 0 waits (a gloo barrier when the
launcher's environment allows a process group, else polling the markers), merges every rank's
rows into ``predictions.jsonl`` in id order — refusing missing ids, duplicate ids and rows outside
a rank's shard — and scores. Rank files left by a run with another world size are earlier
progress, so a run may resume with a different N.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.atomic import atomic_write_bytes, atomic_write_json
from medbench.errors import ConfigError, IncompleteRun
from medbench.predictions import PredictionsFileError, read_rows
from medbench.schema import SCHEMA_VERSION

log = logging.getLogger("medbench")

PREDICTIONS = "predictions.jsonl"
RANK_FILE = re.compile(r"^predictions\.rank(\d+)(?:-of(\d+))?\.jsonl$")
DEFAULT_WAIT_S = 24 * 3600.0


class MergeError(IncompleteRun):
    """Per-rank predictions that cannot be merged (missing, duplicate or misplaced ids)."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world size {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def _env_int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank and world size as set by torchrun / accelerate (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE")
    if world is None or world <= 1:
        return DistInfo()
    rank = _env_int(env, "RANK")
    if rank is None:
        raise ConfigError(f"WORLD_SIZE={world} is set but RANK is not; launch with torchrun or accelerate")
    local = _env_int(env, "LOCAL_RANK")
    return DistInfo(rank=rank, world_size=world, local_rank=rank if local is None else local, source="env")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` → ``(i, N)`` with ``0 <= i < N``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard {text!r}: expected i/N, e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def resolve(shard: str | None = None, env: Mapping[str, str] | None = None) -> DistInfo:
    """``--shard`` if given (it may not be combined with a multi-process launcher), else the env."""
    launched = from_env(env)
    if shard is None:
        return launched
    if launched.parallel:
        raise ConfigError("--shard cannot be combined with torchrun/accelerate (WORLD_SIZE > 1)")
    i, n = parse_shard(shard)
    return DistInfo(rank=i, world_size=n, local_rank=0, source="shard")


def shard_samples(samples: list[Any], info: DistInfo) -> list[Any]:
    """This rank's samples: positions ``rank, rank + N, …`` of the id-sorted list."""
    return list(samples[info.rank :: info.world_size])


def rank_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f"predictions.rank{rank}.jsonl"


def marker_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f"predictions.rank{rank}.done"


def retire_stale(out_dir: Path, info: DistInfo, fingerprint: str) -> None:
    """Rename this rank's file if it was written under another world size (kept as progress)."""
    path = rank_path(out_dir, info.rank)
    marker_path(out_dir, info.rank).unlink(missing_ok=True)
    if not path.exists():
        return
    try:
        header, _ = read_rows(path)
    except PredictionsFileError:
        return
    if header.get("fingerprint") == fingerprint and header.get("world_size") not in (None, info.world_size):
        target = Path(out_dir) / f"predictions.rank{info.rank}-of{header['world_size']}.jsonl"
        if target.exists():
            _, old = read_rows(target)
            _, new = read_rows(path)
            body = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in old + new)
            atomic_write_bytes(target, (json.dumps(header, sort_keys=True) + "\n" + body).encode())
            path.unlink()
        else:
            os.replace(path, target)


def _success_rows(path: Path, fingerprint: str) -> list[dict[str, Any]]:
    try:
        header, rows = read_rows(path)
    except (PredictionsFileError, FileNotFoundError):
        return []
    return rows if header.get("fingerprint") == fingerprint else []


def _fingerprint_of(path: Path) -> str | None:
    try:
        return read_rows(path)[0].get("fingerprint")
    except (PredictionsFileError, FileNotFoundError):
        return None


def done_elsewhere(out_dir: Path, info: DistInfo, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Successful rows of this fingerprint in the merged file and in stale rank files."""
    out: dict[str, dict[str, Any]] = {}
    paths = [Path(out_dir) / PREDICTIONS]
    paths += [p for p in sorted(Path(out_dir).glob("predictions.rank*-of*.jsonl")) if RANK_FILE.match(p.name)]
    for path in paths:
        for row in _success_rows(path, fingerprint):
            if not row.get("error"):
                out[row["id"]] = row
    return out


def write_marker(out_dir: Path, info: DistInfo, fingerprint: str, n_rows: int) -> None:
    atomic_write_json(marker_path(out_dir, info.rank), {"fingerprint": fingerprint, "rank": info.rank,
                                                        "world_size": info.world_size, "rows": n_rows})


def init_group(info: DistInfo, env: Mapping[str, str] | None = None) -> bool:
    """Join a gloo process group when the launcher's environment allows one; ``False`` otherwise.

    Under DeepSpeed on GPUs the group also carries NCCL for CUDA tensors (see :mod:`medbench.zero`).
    """
    from medbench.zero import process_group_backend

    env = os.environ if env is None else env
    if info.source != "env" or not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
        return False
    import datetime

    import torch.distributed as dist

    if not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(env), rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(seconds=DEFAULT_WAIT_S))
    return True


def barrier(group: bool) -> None:
    if group:
        import torch.distributed as dist

        dist.barrier()


def finish_group(group: bool) -> None:
    if group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wait_for_file(path: Path, timeout_s: float = DEFAULT_WAIT_S, poll_s: float = 1.0) -> None:
    """Poll until ``path`` exists (another shard is producing it)."""
    deadline = time.monotonic() + timeout_s
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise MergeError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(poll_s)


def wait_for_ranks(out_dir: Path, info: DistInfo, fingerprint: str, timeout_s: float = DEFAULT_WAIT_S,
                   poll_s: float = 0.5) -> None:
    """Poll until every rank's completion marker of this fingerprint and world size exists."""
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = []
        for r in range(info.world_size):
            try:
                marker = json.loads(marker_path(out_dir, r).read_text())
            except (FileNotFoundError, ValueError):
                waiting.append(r)
                continue
            if marker.get("fingerprint") != fingerprint or marker.get("world_size") != info.world_size:
                waiting.append(r)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise MergeError(f"{out_dir}: rank(s) {waiting} did not finish within {timeout_s:.0f} s; rerun them "
                             "(they resume) and then rank 0 to merge")
        time.sleep(poll_s)


def merge(out_dir: Path, planned_ids: list[str], info: DistInfo, fingerprint: str,
          meta: dict[str, Any]) -> Path:
    """Merge rank files into ``predictions.jsonl`` in id order (atomic), then remove them."""
    out_dir = Path(out_dir)
    position = {sid: i for i, sid in enumerate(planned_ids)}
    chosen: dict[str, dict[str, Any]] = {}
    owner: dict[str, int] = {}
    for r in range(info.world_size):
        path = rank_path(out_dir, r)
        header, rows = read_rows(path)
        if header.get("fingerprint") != fingerprint or header.get("world_size") != info.world_size:
            raise MergeError(f"{path}: written by another configuration or world size")
        for row in rows:
            sid = row["id"]
            if sid not in position:
                raise MergeError(f"{path}: id {sid!r} is not a planned sample")
            if position[sid] % info.world_size != r:
                raise MergeError(f"{path}: id {sid!r} belongs to rank {position[sid] % info.world_size}; "
                                 "shards overlap (check the launcher's RANK/WORLD_SIZE)")
            if sid in owner and owner[sid] != r:
                raise MergeError(f"duplicate id {sid!r} in ranks {owner[sid]} and {r}")
            owner[sid] = r
            if sid not in chosen or not row.get("error") or chosen[sid].get("error"):
                chosen[sid] = row
    for sid, row in done_elsewhere(out_dir, info, fingerprint).items():
        if sid in position and (sid not in chosen or chosen[sid].get("error")):
            chosen[sid] = row
    missing = [sid for sid in planned_ids if sid not in chosen]
    if missing:
        raise MergeError(f"{out_dir}: {len(missing)} planned sample(s) have no prediction after the merge "
                         f"(e.g. {missing[:3]})")
    header = {"header": True, "schema_version": SCHEMA_VERSION, "fingerprint": fingerprint, **meta}
    lines = [json.dumps(header, sort_keys=True)]
    lines += [json.dumps(chosen[sid], sort_keys=True, ensure_ascii=False) for sid in sorted(chosen)]
    target = out_dir / PREDICTIONS
    atomic_write_bytes(target, ("\n".join(lines) + "\n").encode("utf-8"))
    for path in out_dir.glob("predictions.rank*"):
        path.unlink(missing_ok=True)
    log.info("merged %d rank file(s) into %s (%d rows)", info.world_size, target, len(chosen))
    return target


def fold_rank_files(out_dir: Path, fingerprint: str, meta: dict[str, Any]) -> None:
    """Before a single-process run: fold leftover rank files of this fingerprint into ``predictions.jsonl``."""
    out_dir = Path(out_dir)
    extra: dict[str, dict[str, Any]] = {}
    for path in sorted(out_dir.glob("predictions.rank*.jsonl")):
        if RANK_FILE.match(path.name):
            for row in _success_rows(path, fingerprint):
                if not row.get("error"):
                    extra[row["id"]] = row
    merged = out_dir / PREDICTIONS
    if not extra or (merged.exists() and merged.stat().st_size > 0 and _fingerprint_of(merged) != fingerprint):
        return
    base = _success_rows(merged, fingerprint)
    have = {r["id"] for r in base if not r.get("error")}
    rows = base + [extra[sid] for sid in sorted(extra) if sid not in have]
    header = {"header": True, "schema_version": SCHEMA_VERSION, "fingerprint": fingerprint, **meta}
    body = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(out_dir / PREDICTIONS, (json.dumps(header, sort_keys=True) + "\n" + body).encode("utf-8"))
    for path in out_dir.glob("predictions.rank*"):
        path.unlink(missing_ok=True)
    log.info("folded %d row(s) from earlier rank files into %s", len(extra), out_dir / PREDICTIONS)
