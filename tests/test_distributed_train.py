"""Data-parallel LoRA training: two gloo processes (torchrun) equal one process up to float noise.

With dropout 0 the only difference between the runs is the order in which per-sample losses and
gradients are summed (each rank sums its half of a batch, then ``all_reduce`` adds the halves), so
the trained adapters agree to float rounding. Measured on CPU (torch 2.14.1): after 4 AdamW steps
at lr 2e-3 the largest adapter difference was 5.5e-6 while the lora_B weights moved up to 6e-3
from zero, and the loss curves agreed to ~1e-7 relative (AdamW's division by sqrt(v) amplifies
rounding on entries with tiny gradients, hence more than float epsilon). ``ATOL`` = 1e-4 is 5 % of
one AdamW step (lr 2e-3): a real fault (ranks on overlapping or unsynchronised halves) moves
weights by whole steps. The loss-curve check (rtol 1e-5) catches a wrong gradient scale, to which
AdamW's updates are nearly blind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killing import kill_when
from safetensors.torch import load_file

from medbench.ddp import DataParallel
from medbench.predictions import read_rows

ATOL = 1e-4
TRAIN = ["--method-args", "train_limit=16", "epochs=1", "batch_size=4", "dropout=0", "r=8", "checkpoint_every=2"]
RUN = ["run", "--method", "lora", "--task", "phantom-vqa", "--limit", "8", "--batch-size", "4", "--no-attention",
       *TRAIN]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_each_rank_takes_its_slice_of_a_batch():
    batch = [7, 3, 9, 1, 4]
    parts = [DataParallel(r, 2).local(batch) for r in range(2)]
    assert parts == [[7, 9, 4], [3, 1]]
    assert DataParallel().local(batch) == batch and not DataParallel().active


def _sync_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((3,), (2, 2), (5,), (1,))]
    for i, p in enumerate(params):
        if not (rank == 1 and i == 2):  # rank 1 produced no gradient for the third parameter
            p.grad = torch.full_like(p, float(10 * i + rank + 1))
    DataParallel(rank, world).sync_grads(params, bucket_size=5)  # buckets: [3], [4], [5], [1]
    torch.save([p.grad for p in params], f"{out}.rank{rank}.pt")
    tdist.destroy_process_group()


def test_gradients_are_summed_over_ranks_in_buckets(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "grads")), nprocs=2)
    grads = [torch.load(tmp_path / f"grads.rank{r}.pt", weights_only=True) for r in range(2)]
    expected = [torch.full(shape, v) for shape, v in (((3,), 3.0), ((2, 2), 23.0), ((5,), 21.0), ((1,), 63.0))]
    for rank_grads in grads:
        assert all(torch.equal(g, e) for g, e in zip(rank_grads, expected))


def _medbench(args: list[str], nproc: int, out: Path) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                if nproc > 1 else [sys.executable])
    cmd = [*launcher, "-m", "medbench", "-q", *args, "--output-dir", str(out / "runs"),
           "--checkpoint-dir", str(out / "ckpt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _adapter(out: Path, method: str = "lora", fname: str = "adapter_model.safetensors"
             ) -> tuple[Path, dict[str, torch.Tensor]]:
    (folder,) = (out / "ckpt" / "tiny-med-llava" / "phantom-vqa").glob(f"{method}-*")
    return folder, load_file(str(folder / fname))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _medbench(RUN, 1, out)
    return out


def test_torchrun_two_process_lora_equals_single(single, tmp_path):
    proc = _medbench(RUN, 2, tmp_path / "ddp")
    assert "rank 1 of 2 (env): 4 of 8 samples" in proc.stderr
    (one_dir, one), (two_dir, two) = _adapter(single), _adapter(tmp_path / "ddp")
    assert one_dir.name == two_dir.name and one.keys() == two.keys()
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    moved = max(float(one[k].abs().max()) for k in one if "lora_B" in k)
    print(f"2-process vs 1-process LoRA: max |diff| {diff:.3g} (largest lora_B weight {moved:.3g})")
    assert diff <= ATOL and moved > 10 * ATOL  # training moved the weights well beyond the tolerance
    rec_one = json.loads((one_dir / "training.json").read_text())
    rec_two = json.loads((two_dir / "training.json").read_text())
    assert (rec_one["world_size"], rec_two["world_size"]) == (1, 2)
    assert rec_two["losses"] == pytest.approx(rec_one["losses"], rel=1e-5) and len(rec_one["losses"]) == 4
    assert not (two_dir / "state").exists() and (two_dir / "COMPLETE").exists()
    sub = Path("tiny-med-llava") / "phantom-vqa"
    (run_one,) = (single / "runs" / sub).glob("lora+greedy*")
    (run_two,) = (tmp_path / "ddp" / "runs" / sub).glob("lora+greedy*")
    _, rows_one = read_rows(run_one / "predictions.jsonl")
    _, rows_two = read_rows(run_two / "predictions.jsonl")
    assert [(r["id"], r["prediction"]) for r in rows_one] == [(r["id"], r["prediction"]) for r in rows_two]
    m_one = json.loads((run_one / "results.json").read_text())["metrics"]
    m_two = json.loads((run_two / "results.json").read_text())["metrics"]
    assert m_one["closed_accuracy"] == m_two["closed_accuracy"] and m_one["open_recall"] == m_two["open_recall"]


def test_one_process_checkpoint_resumes_under_two(single, tmp_path):
    """A 1-process run killed after its step-2 checkpoint finishes under torchrun with 2 processes."""
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "medbench", "-q", "train", "--method", "lora", "--task", "phantom-vqa", *TRAIN,
           "--checkpoint-dir", str(out / "ckpt")]
    landed = kill_when(cmd, lambda: bool(list(out.glob("ckpt/*/*/*/state/step-00000002/meta.json"))), ENV)
    assert landed, "training finished before the kill"
    resumed = _medbench(["train", "--method", "lora", "--task", "phantom-vqa", *TRAIN], 2, out)
    assert "resuming with 2 process(es) from a checkpoint of 1" in resumed.stderr
    folder, two = _adapter(out)
    assert _max_diff(_adapter(single)[1], two) <= ATOL
    record = json.loads((folder / "training.json").read_text())
    reference = json.loads((_adapter(single)[0] / "training.json").read_text())
    assert record["losses"][:2] == reference["losses"][:2]  # restored from the 1-process checkpoint
    assert record["losses"] == pytest.approx(reference["losses"], rel=1e-5)


def test_torchrun_two_process_a3tune_equals_single(tmp_path):
    args = ["train", "--method", "a3tune", "--task", "phantom-vqa", "--method-args", "train_limit=8", "epochs=1",
            "batch_size=4", "dropout=0", "r=8", "labels=gt", "lam=0.5"]
    _medbench(args, 1, tmp_path / "one")
    _medbench(args, 2, tmp_path / "two")
    for fname in ("adapter_model.safetensors", "a3moe.safetensors"):
        assert _max_diff(_adapter(tmp_path / "one", "a3tune", fname)[1],
                         _adapter(tmp_path / "two", "a3tune", fname)[1]) <= ATOL, fname
    one = json.loads((_adapter(tmp_path / "one", "a3tune")[0] / "training.json").read_text())
    two = json.loads((_adapter(tmp_path / "two", "a3tune")[0] / "training.json").read_text())
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5) and len(one["losses"]) == 2


def test_two_process_kill_and_resume_is_bitwise(tmp_path):
    """SIGKILL a 2-process run (with LoRA dropout) after a checkpoint; the 2-process rerun is bitwise the same."""
    args = ["train", "--method", "lora", "--task", "phantom-vqa", "--method-args", "train_limit=16", "epochs=1",
            "batch_size=4", "r=8", "checkpoint_every=1"]
    _medbench(args, 2, tmp_path / "reference")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "medbench",
           "-q", *args, "--output-dir", str(out / "runs"), "--checkpoint-dir", str(out / "ckpt")]
    # the ranks run in their own sessions: SIGKILL them and the launcher (a lost node)
    landed = kill_when(cmd, lambda: bool(list(out.glob("ckpt/*/*/*/state/step-00000002/meta.json"))), ENV,
                       tree=True)
    assert landed, "training finished before the kill"
    # the newest complete step (a kill can land while the next step is written or the last pruned)
    state = max(p for p in out.glob("ckpt/*/*/*/state/step-*") if (p / "meta.json").exists())
    assert {"rng-rank0.json", "rng-rank1.json", "meta.json"} <= {p.name for p in state.iterdir()}
    step = int(state.name.split("-")[1])
    assert f"at step {step} of 4" in _medbench(args, 2, out).stderr
    (ref_dir, ref), (got_dir, got) = _adapter(tmp_path / "reference"), _adapter(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert (json.loads((got_dir / "training.json").read_text())["losses"]
            == json.loads((ref_dir / "training.json").read_text())["losses"])
