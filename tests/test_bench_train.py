"""``medbench bench train`` machinery: memory accounting, configurations, ratios (no timing asserted)."""

from __future__ import annotations

import pytest
import torch

from medbench.bench_train import bench_configs, cpu_step_peak, held_bytes, make_trainer, measure, ratios
from medbench.tasks.phantom import PhantomVQA
from medbench.training import training_batch


def test_cpu_step_peak_sees_torch_allocations():
    kept = []

    def step():
        a = torch.ones(1_000_000)  # 4 MB, freed before b is allocated
        del a
        b = torch.ones(500_000)  # 2 MB
        c = torch.ones(250_000)  # 1 MB, live together with b
        kept.append((b, c))

    peak = cpu_step_peak(step)
    assert 4_000_000 <= peak < 4_100_000
    peak = cpu_step_peak(lambda: kept.append(torch.ones(2_000_000)))
    assert 8_000_000 <= peak < 8_100_000


def test_held_bytes_counts_shared_storage_once():
    layer = torch.nn.Linear(100, 100)
    tied = torch.nn.Module()
    tied.a, tied.b = layer, layer
    opt = torch.optim.AdamW(layer.parameters())
    assert held_bytes(tied, opt) == (100 * 100 + 100) * 4
    layer(torch.ones(1, 100)).sum().backward()
    opt.step()  # grads + two Adam moments (+ scalar steps)
    assert held_bytes(tied, opt) >= 4 * (100 * 100 + 100) * 4


def test_ratios_from_rows():
    rows = [{"config": "lora", "median_step_s": 2.0, "peak_mib": 100.0},
            {"config": "a3moe", "median_step_s": 2.0, "peak_mib": 102.0},
            {"config": "a3tune", "median_step_s": 2.2, "peak_mib": 104.0}]
    out = ratios(rows)
    assert out["a3tune/lora"] == {"step_time": 1.1, "peak_memory": 1.04}
    rows[0]["median_cpu_s"], rows[2]["median_cpu_s"] = 1.0, 1.25
    assert ratios(rows)["a3tune/lora"]["cpu_time"] == 1.25 and "cpu_time" not in ratios(rows)["a3moe/lora"]
    assert out["a3tune/a3moe"] == {"step_time": 1.1, "peak_memory": pytest.approx(1.02, abs=1e-3)}
    assert "lora/lora" not in out


def test_configurations_train_the_same_batches(random_backbone):
    task = PhantomVQA(n_images={"train": 4, "test": 2})
    samples = task.load("train")[:6]
    chunks = [samples[:3], samples[3:6], samples[:3]]
    images = {s.id: random_backbone.load_image(s.image_path) for s in samples}
    got = {}
    for name in bench_configs():
        trainer = make_trainer(name, random_backbone, task, samples)
        try:
            def build(chunk, trainer=trainer):
                return training_batch(trainer.backbone, chunk, [images[s.id] for s in chunk])

            got[name] = measure(trainer, build, chunks, "cpu", warmup=1, memory=True)
        finally:
            trainer.teardown()
        assert type(random_backbone.model).__name__ == "LlavaForConditionalGeneration"  # restored
    assert got["lora"]["trainable_params"] < got["a3moe"]["trainable_params"] == got["a3tune"]["trainable_params"]
    assert all(len(g["times"]) == len(g["cpu"]) == 1 and g["peak_mib"] > 0 for g in got.values())
    # the naive capture computes the same loss as the efficient one; λ=0 leaves only CE
    assert got["a3tune"]["loss"] == pytest.approx(got["a3tune-naive"]["loss"], abs=1e-4)
    assert got["a3tune"]["loss"] != pytest.approx(got["a3moe"]["loss"], abs=1e-6)
    with pytest.raises(ValueError, match="unknown training configuration"):
        make_trainer("dora", random_backbone, task, samples)
