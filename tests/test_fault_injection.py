"""Fault injection: SIGKILL ``medbench run`` at seeded random points, resume, and compare bytes.

Each configuration is killed five times at increasing, seeded line counts of its predictions file
(a count past the last row kills it while scoring), then run to completion; the predictions file
must be byte-identical to an uninterrupted in-process run.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from killing import kill_when

from medbench.cli import main

KILLS_PER_CONFIG = 5
SUB = Path("tiny-med-llava") / "phantom-vqa"
CONFIGS = {
    "greedy-attention": (["--method", "greedy", "--limit", "20"], "none+greedy", None),
    "nucleus": (["--method", "nucleus", "--limit", "20", "--no-attention"], "none+nucleus", None),
    "beam": (["--method", "beam", "--limit", "12", "--no-attention"], "none+beam", None),
    "shard": (["--method", "greedy", "--limit", "20", "--no-attention"], "none+greedy", "1/2"),
}
LANDED: dict[str, int] = {}


def _cmd(args: list[str], out: Path, shard: str | None) -> list[str]:
    extra = ["--shard", shard] if shard else []
    return [sys.executable, "-m", "medbench", "-q", "run", "--task", "phantom-vqa", "--batch-size", "4", *args,
            "--output-dir", str(out), *extra]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_at(cmd: list[str], watched: Path, target: int) -> bool:
    """Start ``cmd``, SIGKILL it once ``watched`` has ``target`` lines; True if the kill landed."""
    return kill_when(cmd, lambda: _lines(watched) >= target, {**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sigkill_and_resume_is_byte_identical(name: str, tmp_path: Path) -> None:
    args, run_name, shard = CONFIGS[name]
    reference = tmp_path / "reference"
    assert main(["-q", "run", "--task", "phantom-vqa", "--batch-size", "4", *args,
                 "--output-dir", str(reference)]) == 0
    killed = tmp_path / "killed"
    run_dir = killed / SUB / run_name
    watched = run_dir / ("predictions.rank1.jsonl" if shard else "predictions.jsonl")
    planned = int(args[args.index("--limit") + 1]) // (2 if shard else 1)
    rng = random.Random(f"medbench-fault-{name}")
    targets = sorted(rng.sample(range(1, planned + 2), KILLS_PER_CONFIG))
    LANDED[name] = sum(_kill_at(_cmd(args, killed, shard), watched, t) for t in targets)
    assert not (run_dir / "results.json").exists() or LANDED[name] < KILLS_PER_CONFIG
    proc = subprocess.run(_cmd(args, killed, shard), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    if shard:
        assert main(["-q", "run", "--task", "phantom-vqa", "--batch-size", "4", *args, "--output-dir", str(killed),
                     "--shard", "0/2"]) == 0
    expected = (reference / SUB / run_name / "predictions.jsonl").read_bytes()
    assert (run_dir / "predictions.jsonl").read_bytes() == expected
    assert (run_dir / "results.json").exists()
    print(f"fault injection {name}: {LANDED[name]} SIGKILLs landed")
    assert LANDED[name] >= KILLS_PER_CONFIG - 1, LANDED
