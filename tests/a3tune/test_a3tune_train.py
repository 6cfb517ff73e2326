"""A³TUNE training: LoRA parity, batch>1 steps, checkpoint round trip, end-to-end CLI run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medbench.methods.a3tune import A3Tune
from medbench.methods.lora import LoRA
from medbench.tasks.phantom import PhantomVQA

SMALL = {"train": 20, "test": 10}


@pytest.fixture(scope="module")
def task():
    return PhantomVQA(n_images=SMALL)


def test_lambda0_without_moe_is_bitwise_lora(random_backbone, task, tmp_path):
    common = {"batch_size": 2, "epochs": 1, "train_limit": 6}  # 3 optimizer steps
    LoRA(**common).train(random_backbone, task, tmp_path / "lora", 0, "cpu")
    A3Tune(**common, lam=0, qmoe=False, kmoe=False).train(random_backbone, task, tmp_path / "a3", 0, "cpu")
    a = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "a3" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses_a = json.loads((tmp_path / "lora" / "training.json").read_text())["losses"]
    losses_b = json.loads((tmp_path / "a3" / "training.json").read_text())["losses"]
    assert losses_a == losses_b and len(losses_a) == 3


@pytest.mark.parametrize("extra", [{}, {"head_selection": "calibrate", "calib_samples": 4, "align_rows": "answer",
                                        "moe_balance_coef": 0.01}])
def test_full_a3tune_batch_step(random_backbone, task, tmp_path, extra):
    method = A3Tune(batch_size=3, epochs=1, train_limit=6, labels="gt", lam=0.5, **extra)
    out = method.train(random_backbone, task, tmp_path / "ckpt", 0, "cpu")
    record = json.loads((out / "training.json").read_text())
    assert len(record["losses"]) == 2 and all(v == v for v in record["losses"])
    assert record["alignment"]["align_mean"] is not None and record["resolved"]["top_heads"] == 4
    assert record["weak_label_quality"]["iou"] == pytest.approx(1.0)
    moe = load_file(str(out / "a3moe.safetensors"))
    assert any(k.endswith("q_proj.experts_B") for k in moe) and any(k.endswith("k_proj.router.0.weight") for k in moe)
    assert all(v.abs().sum() > 0 for k, v in moe.items() if k.endswith("experts_B"))
    if extra:
        assert len(json.loads((out / "heads.json").read_text())["heads"]) == 4
        assert record["alignment"]["balance_mean"] is not None
    # the backbone is restored after training
    assert type(random_backbone.model).__name__ == "LlavaForConditionalGeneration"


def test_checkpoint_round_trip_identical_logits(random_backbone, task, tmp_path):
    from peft import get_peft_model

    from medbench.methods.a3tune.context import A3Hooks, template_suffix
    from medbench.methods.a3tune.method import CONFIG_FILE, save_checkpoint
    from medbench.methods.a3tune.moe import RoutingState, install_a3moe, moe_modules, remove_a3moe

    method = A3Tune(merge_lora=False)
    res = method.resolved(random_backbone, task)
    spec = method.moe_spec(res, random_backbone)
    samples = task.load("test")[:3]
    batch = random_backbone.encode_prompts(samples, [random_backbone.load_image(s.image_path) for s in samples])
    torch.manual_seed(1)
    model = get_peft_model(random_backbone.model, method.peft_config())
    state = RoutingState()
    install_a3moe(model, spec, state)
    hooks = A3Hooks(random_backbone.image_token_id, template_suffix(random_backbone), state).attach(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
        model.eval()
        before = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values=batch.pixel_values).logits
    save_checkpoint(model, tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"moe": dataclasses.asdict(spec)}))
    hooks.detach()
    remove_a3moe(model)
    random_backbone.model = model.unload()
    tuned = method.apply(random_backbone, tmp_path)
    try:
        assert len(moe_modules(tuned.model)) == 2 * random_backbone.text_config.num_hidden_layers
        with torch.no_grad():
            after = tuned.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                pixel_values=batch.pixel_values).logits
        assert torch.equal(before, after)
        from medbench.methods.greedy import Greedy

        gen = Greedy().generate(tuned, batch, [0, 1, 2], 4)  # decode steps reuse the prefill's Q-MoE α
        assert len(gen.tokens) == 3
    finally:
        remove_a3moe(tuned.model)
        random_backbone.model = tuned.model.unload()


TINY_WEIGHTS = Path(__file__).resolve().parents[2] / "medbench" / "assets" / "tiny-med-llava" / "model.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is not built yet")
def test_end_to_end_cli_run(tmp_path, capsys):
    from medbench.cli import main
    from medbench.console import progress_bars_enabled

    args = ["-q", "run", "--method", "a3tune", "--task", "phantom-vqa", "--limit", "8", "--output-dir",
            str(tmp_path / "runs"), "--checkpoint-dir", str(tmp_path / "ckpt"), "--method-args", "train_limit=16",
            "epochs=1", "labels=gt", "batch_size=4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "step/s" not in err and "sample/s" not in err  # -q: no training or decoding bars
    assert progress_bars_enabled()  # -q lasts for the command only
    results = list((tmp_path / "runs").rglob("results.json"))
    assert len(results) == 1
    record = json.loads(results[0].read_text())
    assert record.get("counts", {}).get("failed", 0) == 0
    quality = record["weak_label_quality"]  # training labels vs GT RoIs, carried from training.json
    assert quality["source"] == "gt" and quality["iou"] == 1.0 and quality["n_gt"] > 0
    assert list((tmp_path / "ckpt").rglob("a3moe.safetensors"))
    assert main(args) == 0  # cached adapter and predictions are reused


@pytest.mark.slow
@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is not built yet")
def test_sweep_and_weak_label_cli(tmp_path):
    from medbench.cli import main

    assert main(["-q", "weak-labels", "eval", "--task", "phantom-vqa", "--limit", "4", "--output-dir",
                 str(tmp_path / "wl"), "--method-args", "scorer=random"]) == 0
    quality = json.loads(next((tmp_path / "wl").rglob("weak_label_quality.json")).read_text())
    assert {"pixel", "token"} <= set(quality) and quality["pixel"]["n_gt"] == 4
    args = ["-q", "sweep", "--task", "phantom-vqa", "--param", "top_k=1,2", "--limit", "4", "--output-dir",
            str(tmp_path / "sw"), "--runs-dir", str(tmp_path / "runs"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--method-args", "train_limit=4", "epochs=1", "scorer=random", "batch_size=2"]
    assert main(args) == 0
    rows = (tmp_path / "sw" / "phantom-vqa" / "param-top_k" / "sweep.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("x,method_args")
    assert (tmp_path / "sw" / "phantom-vqa" / "param-top_k" / "sweep.png").stat().st_size > 0
