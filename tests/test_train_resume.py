"""Step checkpoints: a crashed training run resumes to bitwise the same adapter and loss curve."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from medbench import train_state
from medbench.backbones.base import Backbone
from medbench.methods.a3tune import A3Tune
from medbench.methods.lora import TARGET_MODULES, LoRA
from medbench.runner import Resolved, RunConfig, run_dir_for
from medbench.tasks.phantom import PhantomVQA
from medbench.training import Checkpointing, train_supervised


class Crash:
    """An extra loss of exactly zero that raises on its ``at``-th call (a crash inside a step)."""

    def __init__(self, at: int | None = None):
        self.at, self.calls = at, 0

    def __call__(self, out, batch) -> torch.Tensor:
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise RuntimeError("injected crash")
        return torch.zeros((), device=out.logits.device)


@pytest.fixture(scope="module")
def samples():
    return PhantomVQA(n_images={"train": 20, "test": 10}).load("train")[:6]


def _train(backbone: Backbone, samples, state: Path | None, crash: int | None = None, every: int = 2,
           key: str = "run") -> tuple[dict[str, torch.Tensor], list[float]]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(backbone.model),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=TARGET_MODULES))
    tuned = Backbone(model, backbone.processor, backbone.template, checkpoint_id="resume-test")
    losses = train_supervised(tuned, samples, epochs=2, batch_size=2, lr=2e-3, seed=3, desc="t", progress=False,
                              extra_loss=Crash(crash), checkpoint=Checkpointing(state, every, key) if state else None)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, losses


@pytest.fixture(scope="module")
def reference(random_backbone, samples):
    return _train(random_backbone, samples, None)


def _assert_same(a: tuple[dict, list], b: tuple[dict, list]) -> None:
    assert a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]), "adapter differs from the uninterrupted run"
    assert a[1] == b[1] and len(a[1]) == 6


@pytest.mark.parametrize(("crashes", "every"), [([4], 2), ([1, 3, 3], 2), ([2, 2, 1, 2], 1), ([5], 3)])
def test_crash_and_resume_is_bitwise_identical(random_backbone, samples, reference, tmp_path, crashes, every):
    """Each run crashes in its ``at``-th step (counted from where it resumed)."""
    state = tmp_path / "state"
    for at in crashes:
        with pytest.raises(RuntimeError, match="injected crash"):
            _train(random_backbone, samples, state, crash=at, every=every)
    resumed = _train(random_backbone, samples, state, every=every)
    _assert_same(resumed, reference)
    # the final state is kept until the caller marks the adapter complete: a rerun does no step
    (folder,) = list(state.glob("step-*"))
    assert json.loads((folder / "meta.json").read_text())["step"] == 6
    _assert_same(_train(random_backbone, samples, state, crash=1, every=every), reference)


def test_checkpoint_contents_and_pruning(random_backbone, samples, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(RuntimeError):
        _train(random_backbone, samples, state, crash=6, every=2)
    (folder,) = list(state.glob("step-*"))  # steps 2 and 4 were written; only 4 is kept
    meta = json.loads((folder / "meta.json").read_text())
    assert folder.name == "step-00000004" and meta["step"] == 4 and len(meta["losses"]) == 4
    assert sorted(meta["order"]) == sorted(set(meta["order"])) and len(meta["order"]) == 4  # epoch 2: 4 of 6 left
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "optim.pt", "rng-rank0.json",
                                                         "trainable.safetensors"]
    blob = torch.load(folder / "optim.pt", weights_only=True)
    assert blob["scheduler"]["last_epoch"] == 4 and len(blob["optimizer"]["state"]) > 0


def test_unfinished_or_foreign_state_is_ignored(random_backbone, samples, reference, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(RuntimeError):
        _train(random_backbone, samples, state, crash=5, key="another run")
    half = train_state.step_dir(state, 5)  # a write killed before meta.json
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"partial")
    assert sorted(p.name for p in state.glob("step-*")) == ["step-00000004", "step-00000005"]
    assert train_state.latest(state, "some other key") is None
    _assert_same(_train(random_backbone, samples, state), reference)
    assert [p.name for p in state.glob("step-*")] == ["step-00000006"]


def test_checkpoint_cadence_is_not_fingerprinted(random_backbone):
    task = PhantomVQA(n_images={"train": 20, "test": 10})
    for cls in (LoRA, A3Tune):
        assert cls(checkpoint_every=3).fingerprint(random_backbone, task, 0) == cls().fingerprint(random_backbone, task, 0)
        assert cls(epochs=2).fingerprint(random_backbone, task, 0) != cls().fingerprint(random_backbone, task, 0)
    cfg = RunConfig(method="lora", task="phantom-vqa")
    plain = Resolved(tuning="lora", decoding="greedy", tuning_args={}, decoding_args={})
    with_cadence = Resolved(tuning="lora", decoding="greedy", tuning_args={"checkpoint_every": "3"}, decoding_args={})
    assert run_dir_for(cfg, plain) == run_dir_for(cfg, with_cadence)
    with pytest.raises(ValueError, match="checkpoint_every"):
        LoRA(checkpoint_every=-1)
