"""Data-parallel evaluation: rank from the environment, sharding, merge checks, 2 gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medbench import distributed as dist
from medbench.cli import main
from medbench.errors import ConfigError
from medbench.predictions import PredictionsWriter, read_rows
from medbench.types import Prediction

RUN = ["--method", "greedy", "--task", "phantom-vqa", "--limit", "16", "--batch-size", "4"]
SUB = Path("tiny-med-llava") / "phantom-vqa" / "none+greedy"


def test_rank_from_launcher_env():
    info = dist.from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.source) == (3, 8, 1, "env")
    assert dist.from_env({}) == dist.DistInfo()
    assert dist.from_env({"WORLD_SIZE": "1", "RANK": "0"}).world_size == 1
    with pytest.raises(ConfigError):
        dist.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError):
        dist.from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(AttributeError):
        info.rank = 0  # type: ignore[misc]


def test_shard_flag():
    assert dist.resolve("1/4", env={}) == dist.DistInfo(1, 4, 0, "shard")
    for bad in ("4/4", "a/b", "1", "-1/2", "0/0"):
        with pytest.raises(ConfigError):
            dist.resolve(bad, env={})
    with pytest.raises(ConfigError):
        dist.resolve("0/2", env={"WORLD_SIZE": "2", "RANK": "0"})


def test_shards_partition_in_id_order():
    ids = [f"s{i:02d}" for i in range(11)]
    parts = [dist.shard_samples(ids, dist.DistInfo(r, 3)) for r in range(3)]
    assert parts[1] == ["s01", "s04", "s07", "s10"]
    assert sorted(sum(parts, [])) == ids


def _row(sid: str, text: str = "yes") -> Prediction:
    return Prediction(id=sid, prompt_hash="h", prediction=text, answer="yes", answer_type="closed", seed=1)


def _write_ranks(out: Path, shards: list[list[str]], world: int = 2) -> None:
    for r, ids in enumerate(shards):
        PredictionsWriter(dist.rank_path(out, r), "fp", {"rank": r, "world_size": world}).append(
            [_row(i) for i in ids])


def test_merge_checks_missing_duplicate_and_misplaced(tmp_path):
    ids = ["a", "b", "c", "d"]
    info = dist.DistInfo(0, 2)
    _write_ranks(tmp_path, [["a", "c"], ["b"]])
    with pytest.raises(dist.MergeError, match="no prediction"):
        dist.merge(tmp_path, ids, info, "fp", {})
    for p in tmp_path.iterdir():
        p.unlink()
    _write_ranks(tmp_path, [["a", "c"], ["b", "c"]])
    with pytest.raises(dist.MergeError, match="belongs to rank 0"):
        dist.merge(tmp_path, ids, info, "fp", {})
    for p in tmp_path.iterdir():
        p.unlink()
    _write_ranks(tmp_path, [["a", "c"], ["b", "d", "d"]])
    target = dist.merge(tmp_path, ids, info, "fp", {"task": "t"})
    header, rows = read_rows(target)
    assert header["fingerprint"] == "fp" and "rank" not in header
    assert [r["id"] for r in rows] == ids
    assert not list(tmp_path.glob("predictions.rank*"))


def test_wait_for_ranks_times_out(tmp_path):
    dist.write_marker(tmp_path, dist.DistInfo(0, 2), "fp", 1)
    with pytest.raises(dist.MergeError, match=r"rank\(s\) \[1\]"):
        dist.wait_for_ranks(tmp_path, dist.DistInfo(0, 2), "fp", timeout_s=0.2, poll_s=0.05)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    assert main(["-q", "run", *RUN, "--output-dir", str(out)]) == 0
    return out / SUB


def _compare(a: Path, b: Path) -> None:
    ha, ra = read_rows(a / "predictions.jsonl")
    hb, rb = read_rows(b / "predictions.jsonl")
    assert ha == hb
    assert [(r["id"], r["prediction"], r["seed"]) for r in ra] == [(r["id"], r["prediction"], r["seed"]) for r in rb]
    for x, y in zip(ra, rb):
        assert (x["attention"] is None) == (y["attention"] is None)
        if x["attention"]:
            np.testing.assert_allclose(x["attention"]["grid"], y["attention"]["grid"], atol=1e-5)
    ma = json.loads((a / "results.json").read_text())["metrics"]
    mb = json.loads((b / "results.json").read_text())["metrics"]
    for key in ("closed_accuracy", "open_recall"):
        assert ma[key] == mb[key], key


def test_torchrun_two_processes_equal_single(single, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "medbench", "-q", "run", *RUN, "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2 (env): 8 of 16 samples" in proc.stderr
    _compare(single, out / SUB)
    assert sorted(p.name for p in (out / SUB).iterdir()) == ["per_sample.json", "predictions.jsonl",
                                                              "results.json", "run.json"]


def test_shard_flag_runs_merge_on_shard_zero(single, tmp_path):
    out = tmp_path / "shards"
    assert main(["-q", "run", *RUN, "--output-dir", str(out), "--shard", "1/2"]) == 0
    assert not (out / SUB / "results.json").exists()
    assert (out / SUB / "predictions.rank1.done").exists()
    assert main(["-q", "run", *RUN, "--output-dir", str(out), "--shard", "0/2"]) == 0
    _compare(single, out / SUB)


def test_resume_with_another_world_size(single, tmp_path):
    out = tmp_path / "resume"
    assert main(["-q", "run", *RUN, "--output-dir", str(out), "--shard", "2/3", "--no-attention"]) == 0
    assert main(["-q", "run", *RUN, "--output-dir", str(out), "--no-attention"]) == 0
    _, rows = read_rows(out / SUB / "predictions.jsonl")
    _, ref = read_rows(single / "predictions.jsonl")
    assert sorted((r["id"], r["prediction"]) for r in rows) == [(r["id"], r["prediction"]) for r in ref]
    assert not list((out / SUB).glob("predictions.rank*"))
