"""Stable hashes for fingerprints and per-sample seeds (independent of PYTHONHASHSEED)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def stable_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_obj(obj: Any) -> str:
    return sha256_text(stable_json(obj))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sample_seed(global_seed: int, task: str, sample_id: str, repeat: int = 0) -> int:
    """Per-sample seed from (global seed, task, sample id, repeat): batch-size and order invariant."""
    digest = hashlib.sha256(f"{global_seed}\x1f{task}\x1f{sample_id}\x1f{repeat}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
