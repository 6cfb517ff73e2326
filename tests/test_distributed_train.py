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

import importlib.util
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
    assert "step/s" not in proc.stderr and "Loading weights" not in proc.stderr  # -q: no progress bars at all
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


A3TUNE = ["train", "--method", "a3tune", "--task", "phantom-vqa", "--method-args", "train_limit=8", "epochs=1",
          "batch_size=4", "dropout=0", "r=8", "labels=gt", "lam=0.5"]


@pytest.fixture(scope="module")
def a3tune_single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("a3tune-single")
    _medbench(A3TUNE, 1, out)
    return out


def _assert_a3tune_matches(one_out: Path, other_out: Path) -> dict:
    for fname in ("adapter_model.safetensors", "a3moe.safetensors"):
        assert _max_diff(_adapter(one_out, "a3tune", fname)[1], _adapter(other_out, "a3tune", fname)[1]) <= ATOL, fname
    one = json.loads((_adapter(one_out, "a3tune")[0] / "training.json").read_text())
    other = json.loads((_adapter(other_out, "a3tune")[0] / "training.json").read_text())
    assert other["losses"] == pytest.approx(one["losses"], rel=1e-5) and len(one["losses"]) == 2
    assert (one["world_size"], other["world_size"]) == (1, 2)
    return other


def test_torchrun_two_process_a3tune_equals_single(a3tune_single, tmp_path):
    _medbench(A3TUNE, 2, tmp_path / "two")
    assert _assert_a3tune_matches(a3tune_single, tmp_path / "two")["deepspeed"] is False


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


# --- DeepSpeed ZeRO through accelerate launch (stages 1 and 2, two CPU processes over gloo) ---

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")


def _zero_config(folder: Path, stage: int, nproc: int = 2) -> Path:
    path = folder / f"zero{stage}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
num_processes: {nproc}
mixed_precision: 'no'
deepspeed_config:
  zero_stage: {stage}
  offload_optimizer_device: none
  offload_param_device: none
  gradient_accumulation_steps: 1
""")
    return path


def _accelerate_cmd(args: list[str], config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "medbench", "-q",
            *args, "--output-dir", str(out / "runs"), "--checkpoint-dir", str(out / "ckpt")]


def _accelerate(args: list[str], config: Path, out: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_accelerate_cmd(args, config, out), capture_output=True, text=True, env=ENV, timeout=900)
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


@needs_deepspeed
def test_zero2_two_process_lora_equals_single(single, tmp_path):
    """ZeRO-2 shards optimizer state and gradients; the adapter equals the one-process adapter."""
    _accelerate(["train", "--method", "lora", "--task", "phantom-vqa", *TRAIN], _zero_config(tmp_path, 2), tmp_path)
    (one_dir, one), (zero_dir, zero) = _adapter(single), _adapter(tmp_path)
    assert one_dir.name == zero_dir.name  # DeepSpeed is not part of the fingerprint
    diff = _max_diff(one, zero)
    print(f"ZeRO-2 2-process vs 1-process LoRA: max |diff| {diff:.3g}")
    assert diff <= ATOL
    record = json.loads((zero_dir / "training.json").read_text())
    assert (record["world_size"], record["deepspeed"]) == (2, True)
    reference = json.loads((one_dir / "training.json").read_text())
    assert record["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert not (zero_dir / "state").exists() and (zero_dir / "COMPLETE").exists()


@needs_deepspeed
def test_zero1_two_process_a3tune_equals_single(a3tune_single, tmp_path):
    """A³MoE's routing leaves experts without gradients on some steps; ZeRO-1 still steps them all alike."""
    _accelerate(A3TUNE, _zero_config(tmp_path, 1), tmp_path)
    assert _assert_a3tune_matches(a3tune_single, tmp_path)["deepspeed"] is True


@needs_deepspeed
def test_zero2_kill_and_resume_is_bitwise(tmp_path):
    """SIGKILL a ZeRO-2 run after a checkpoint: each rank reloads its optimizer partition, bitwise."""
    args = ["train", "--method", "lora", "--task", "phantom-vqa", "--method-args", "train_limit=32", "epochs=1",
            "batch_size=4", "r=8", "checkpoint_every=1"]
    config = _zero_config(tmp_path, 2)
    _accelerate(args, config, tmp_path / "reference")
    out = tmp_path / "killed"
    landed = kill_when(_accelerate_cmd(args, config, out),
                       lambda: bool(list(out.glob("ckpt/*/*/*/state/step-00000002/meta.json"))), ENV, tree=True)
    assert landed, "training finished before the kill"
    state = max(p for p in out.glob("ckpt/*/*/*/state/step-*") if (p / "meta.json").exists())
    assert {"optim-rank0.pt", "optim-rank1.pt", "rng-rank0.json", "rng-rank1.json"} <= {p.name for p in state.iterdir()}
    assert json.loads((state / "meta.json").read_text())["zero_stage"] == 2
    partition = torch.load(state / "optim-rank1.pt", weights_only=True)
    assert partition["stage"] == 2 and partition["fp32_partitions"]
    step = int(state.name.split("-")[1])
    assert f"at step {step} of 8" in _accelerate(args, config, out).stderr
    (ref_dir, ref), (got_dir, got) = _adapter(tmp_path / "reference"), _adapter(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert (json.loads((got_dir / "training.json").read_text())["losses"]
            == json.loads((ref_dir / "training.json").read_text())["losses"])


@needs_deepspeed
@pytest.mark.parametrize("stage", [0, 3])
def test_other_zero_stages_are_refused_with_a_clear_error(stage, monkeypatch):
    """The stage is read from the launcher's environment before anything is wrapped."""
    from medbench import zero
    from medbench.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(stage))
    with pytest.raises(ConfigError, match=f"ZeRO stage {stage} is not supported: medbench trains with stages 1 and 2"):
        zero.launched_stage()
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert zero.launched_stage() == 2


def test_zero_checkpoint_is_not_resumed_without_deepspeed(tmp_path):
    """A partitioned optimizer state cannot seed a plain run (or another stage or process count)."""
    from medbench import train_state
    from medbench.errors import ConfigError

    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = train_state.TrainState(step=1, order=[0], order_rng=random.Random(0).getstate(), world_size=2,
                                   zero_stage=2)
    folder = train_state.write_checkpoint(tmp_path, "key", state, {"w": param}, optimizer, scheduler)
    with pytest.raises(ConfigError, match="under ZeRO stage 2 by 2 process"):
        train_state.load_checkpoint(folder, "key", {"w": param}, optimizer, scheduler, rank=0)


def test_deepspeed_is_requested_by_accelerates_environment():
    from medbench import zero

    assert zero.requested({"ACCELERATE_USE_DEEPSPEED": "true"}) and not zero.requested({})
    assert not zero.requested({"ACCELERATE_USE_DEEPSPEED": "false"})
    assert zero.process_group_backend({}) == "gloo"


def test_deepspeed_config_takes_medbench_hyperparameters(caplog):
    """``auto`` or equal values are filled silently; a different value in the user's file is replaced, loudly."""
    from medbench.zero import _set

    config = {"gradient_clipping": 0.5, "gradient_accumulation_steps": "auto", "train_batch_size": 8}
    with caplog.at_level("WARNING", logger="medbench"):
        _set(config, "gradient_accumulation_steps", 1)
        _set(config, "train_batch_size", 8)
        assert not caplog.records
        _set(config, "gradient_clipping", 1.0)
    assert config == {"gradient_clipping": 1.0, "gradient_accumulation_steps": 1, "train_batch_size": 8}
    assert "gradient_clipping=0.5 replaced by medbench's 1.0" in caplog.text
