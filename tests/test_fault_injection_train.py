"""Fault injection for training: SIGKILL ``medbench train`` at seeded points, rerun, compare bitwise.

Each configuration checkpoints every step. A kill waits until the step checkpoint of a seeded
target step is complete, then a seeded delay (so it lands inside a later step, inside a
checkpoint write, or inside the final adapter save), then SIGKILLs the process. The run is then
finished by a plain rerun; the adapter files and ``training.json`` (loss curve, A³TUNE's alignment
statistics) must equal those of an uninterrupted run bit for bit, and the step state must be gone once the adapter is complete.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killing import kill_when
from safetensors.torch import load_file

from medbench.train_state import META, STATE_DIR

STEPS = 12  # train_limit 12, batch size 2, 2 epochs
CONFIGS = {
    "lora": (["--method", "lora", "--method-args", "train_limit=12", "epochs=2", "batch_size=2", "r=8",
              "checkpoint_every=1"], ["adapter_model.safetensors"], 8),
    "a3tune": (["--method", "a3tune", "--method-args", "train_limit=12", "epochs=2", "batch_size=2", "r=8",
                "labels=gt", "lam=0.5", "checkpoint_every=1"], ["adapter_model.safetensors", "a3moe.safetensors"], 4),
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(args: list[str], ckpt: Path) -> list[str]:
    return [sys.executable, "-m", "medbench", "-q", "train", "--task", "phantom-vqa", *args,
            "--checkpoint-dir", str(ckpt)]


def _adapter_dir(ckpt: Path) -> Path | None:
    found = sorted((ckpt / "tiny-med-llava" / "phantom-vqa").glob("*-*")) if ckpt.exists() else []
    return found[0] if found else None


def _saved_step(ckpt: Path) -> int:
    """The newest complete step checkpoint (``STEPS`` once the adapter is complete)."""
    folder = _adapter_dir(ckpt)
    if folder is None:
        return -1
    if (folder / "COMPLETE").exists():
        return STEPS
    steps = [int(p.parent.name.split("-")[1]) for p in (folder / STATE_DIR).glob(f"step-*/{META}")]
    return max(steps, default=-1)


def _kill_after(cmd: list[str], ckpt: Path, step: int, delay: float) -> bool:
    """Start ``cmd``; once step ``step`` is saved, wait ``delay`` s and SIGKILL it. True if it landed."""
    return kill_when(cmd, lambda: _saved_step(ckpt) >= step, ENV, delay=delay)


def _finish(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sigkill_training_and_resume_is_bitwise_identical(name: str, tmp_path: Path) -> None:
    args, files, kills = CONFIGS[name]
    _finish(_cmd(args, tmp_path / "reference"))
    reference = _adapter_dir(tmp_path / "reference")
    killed = tmp_path / "killed"
    rng = random.Random(f"medbench-train-fault-{name}")
    targets = sorted(rng.sample(range(0, STEPS + 1), kills))
    landed = 0
    for target in targets:
        before = _saved_step(killed)
        landed += _kill_after(_cmd(args, killed), killed, target, rng.uniform(0.0, 0.5))
        assert _saved_step(killed) >= before  # a kill never loses a finished checkpoint
    saved = _saved_step(killed)
    log = _finish(_cmd(args, killed))
    if 0 < saved < STEPS:  # the rerun continued from the checkpoint instead of starting over
        assert f"at step {saved} of {STEPS}" in log, log[-2000:]
    out = _adapter_dir(killed)
    assert out.name == reference.name and (out / "COMPLETE").read_text() == (reference / "COMPLETE").read_text()
    for fname in files:
        a, b = load_file(str(reference / fname)), load_file(str(out / fname))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), fname
    record = json.loads((reference / "training.json").read_text())
    assert json.loads((out / "training.json").read_text()) == record and len(record["losses"]) == STEPS
    assert not (out / STATE_DIR).exists()
    print(f"training fault injection {name}: {landed} SIGKILLs landed at steps {targets}")
    assert landed >= kills - 1, (landed, targets)
