"""Trainer settings the A³TUNE paper leaves open: schedule, gradient accumulation, expert dropout.

Real backbones default to the reference code's (cosine, effective batch 32, expert dropout 0.05),
the embedded tier keeps linear / 8 / none, ``preset=ref`` forces the reference's.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from medbench.backbones.base import Backbone
from medbench.backbones.llava import LlavaMedV15
from medbench.backbones.tiny import TinyMedLlava
from medbench.methods.a3tune import A3Tune
from medbench.methods.a3tune.params import resolve
from medbench.methods.lora import LoRA
from medbench.tasks.phantom import PhantomVQA
from medbench.training import lr_factor, warmup_steps


@pytest.fixture(scope="module")
def task():
    return PhantomVQA(n_images={"train": 20, "test": 10})


def test_cosine_schedule_by_hand_and_against_transformers():
    total = 11
    warmup = warmup_steps("cosine", total, 0.1)
    assert warmup == 2  # ⌈11·0.1⌉, as transformers' Trainer
    by_hand = {0: 0.0, 1: 0.5, 2: 1.0, 5: 0.75, 8: 0.25, 11: 0.0}  # ½(1+cos(π·(s−2)/9)) after warm-up
    for step, want in by_hand.items():
        assert lr_factor("cosine", step, warmup, total) == pytest.approx(want, abs=1e-12)
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=total)
    for step in range(total):
        assert lr_factor("cosine", step, warmup, total) == pytest.approx(hf.lr_lambdas[0](step), abs=1e-12)
    # medbench's linear warm-up/decay is unchanged: w = max(1, ⌊10·0.03⌋) = 1, factors 1, (10−s)/9
    assert warmup_steps("linear", 10, 0.03) == 1
    assert [lr_factor("linear", s, 1, 10) for s in (0, 5, 9)] == [1.0, 5 / 9, 1 / 9]
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("step", 0, 1, 10)


def test_defaults_real_backbones_reference_embedded_tier_unchanged(task):
    res = resolve(A3Tune().params, task, 4, 8)
    assert A3Tune().trainer_settings(LlavaMedV15) == {"lr": 2e-4, "lr_schedule": "cosine", "grad_accum": 4,
                                                      "expert_dropout": 0.05}  # 8 × 4 = 32
    assert A3Tune().moe_spec(res, LlavaMedV15).dropout == 0.05
    assert A3Tune(batch_size=4).trainer_settings(LlavaMedV15)["grad_accum"] == 8
    assert A3Tune().trainer_settings(TinyMedLlava) == {"lr": 2e-3, "lr_schedule": "linear", "grad_accum": 1,
                                                       "expert_dropout": 0.0}
    assert A3Tune(preset="ref").trainer_settings(TinyMedLlava) == {"lr": 2e-3, "lr_schedule": "cosine",
                                                                   "grad_accum": 4, "expert_dropout": 0.05}
    explicit = A3Tune(preset="ref", lr_schedule="linear", grad_accum=2, expert_dropout=0.1)
    assert explicit.trainer_settings(LlavaMedV15) == {"lr": 2e-4, "lr_schedule": "linear", "grad_accum": 2,
                                                      "expert_dropout": 0.1}
    assert LoRA().schedule_for(LlavaMedV15) == ("cosine", 4) and LoRA().schedule_for(TinyMedLlava) == ("linear", 1)
    with pytest.raises(ValueError, match="expert_dropout"):
        A3Tune(expert_dropout=1.0)
    with pytest.raises(ValueError, match="grad_accum"):
        LoRA(grad_accum=0)


def test_expert_dropout_only_while_training():
    from medbench.methods.a3tune.moe import QMoELinear, RoutingState

    torch.manual_seed(0)
    layer = QMoELinear(torch.nn.Linear(16, 16), 0, RoutingState(), 2, 4, 8.0, "linear", 8, dropout=0.5)
    torch.nn.init.normal_(layer.experts_B)
    x, gates = torch.randn(3, 5, 16), torch.full((3, 1, 2), 0.5)
    layer.train()
    assert not torch.equal(layer.mixture(x, gates), layer.mixture(x, gates))
    layer.eval()
    torch.testing.assert_close(layer.mixture(x, gates), layer.mixture(x, gates))
    plain = QMoELinear(torch.nn.Linear(16, 16), 0, RoutingState(), 2, 4, 8.0, "linear", 8)
    assert isinstance(plain.dropout, torch.nn.Identity)


@pytest.mark.parametrize("ce_reduction", ["per_sample", "token"])
def test_accumulated_micro_batches_equal_one_batch(random_backbone, task, tmp_path, ce_reduction):
    """(batch, accum) = (4, 1), (2, 2), (1, 4): the same loss curve and weights (spec §10, 5)."""
    common = {"epochs": 1, "train_limit": 8, "labels": "gt", "lam": 0.5, "dropout": 0.0, "expert_dropout": 0.0,
              "ce_reduction": ce_reduction, "lr_schedule": "cosine"}
    runs = {}
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        out = A3Tune(batch_size=batch, grad_accum=accum, **common).train(
            random_backbone, task, tmp_path / f"{batch}x{accum}", 0, "cpu")
        import json

        record = json.loads((out / "training.json").read_text())
        assert record["trainer"]["grad_accum"] == accum and record["trainer"]["lr_schedule"] == "cosine"
        runs[(batch, accum)] = (record["losses"], {**load_file(str(out / "adapter_model.safetensors")),
                                                  **load_file(str(out / "a3moe.safetensors"))})
    losses, weights = runs[(4, 1)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    for key in ((2, 2), (1, 4)):
        other_losses, other = runs[key]
        assert other_losses == pytest.approx(losses, rel=1e-5, abs=1e-6)
        assert weights.keys() == other.keys()
        for name in weights:
            torch.testing.assert_close(other[name], weights[name], atol=1e-5, rtol=1e-4)
    moved = [n for n in weights if n.endswith("experts_B") and weights[n].abs().sum() > 0]
    assert moved  # the steps did train the experts


def test_tiny_clip_docstring_states_the_crop_it_uses():
    from medbench.methods.a3tune import tiny_clip

    assert f"{tiny_clip.CROP}×{tiny_clip.CROP}" in tiny_clip.__doc__


def test_lora_base_backbone_is_unchanged(random_backbone):
    assert isinstance(random_backbone, Backbone)
    assert LoRA().schedule_for(random_backbone) == ("linear", 1)
