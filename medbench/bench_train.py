"""``medbench bench train``: A³TUNE vs LoRA step time and peak memory, side by side in one process.

Target (DESIGN, spec §6 gate): an A³TUNE step costs ≤ 1.10× the LoRA step time and ≤ 1.05× its
peak memory. Every configuration trains on the same batches, one after another in this process:

* ``lora``: peft LoRA r=64 on all seven projections of the language model, CE only;
* ``a3moe``: A³TUNE with λ=0 — LoRA + A³MoE, no capture (``a3tune``/``a3moe`` = capture overhead);
* ``a3tune``: the full step — A³MoE, per-step head selection (Eq. 8), efficient capture, L_align (Eq. 10);
* ``a3tune-naive``: the same loss through the naive capture (every head's rows with autograd).

Weak labels are precomputed before training, so the step cost does not depend on their source;
the benchmark uses the task's GT RoIs as the segments (``labels=gt``).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one step; on CPU the bytes held by
parameters, buffers, gradients and optimizer state when the step starts plus the highest net
allocation during it, read from the profiler's allocator events (``profile_memory=True``; Python's
``tracemalloc`` does not see torch's allocator). The profiled step is not one of the timed steps.
Step time is wall time; on CPU the target is judged on process CPU time per step (``cpu_time``),
since wall time on a shared CPU mostly measures the other processes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medbench.bench import load_bench_backbone, sync_device
from medbench.models import resolve_device
from medbench.provenance import versions
from medbench.registry import METHODS, TASKS

# torch, peft and medbench.training are imported inside the functions: `medbench bench --help`
# (the CLI imports this module at start-up) must not pay for torch.

TARGETS = {"step_time": 1.10, "peak_memory": 1.05}
MIB = 2**20


@dataclass
class Trainer:
    """One configuration's model, its per-batch loss and how to undo it."""

    model: Any
    backbone: Any
    loss: Callable[[Any, Any], Any]
    teardown: Callable[[], None]
    notes: dict[str, Any] = field(default_factory=dict)


def bench_configs() -> dict[str, Any]:
    """Every training configuration the registered tuning methods provide (``bench_trainers``), in
    registry order: name → factory(backbone, task, samples)."""
    out: dict[str, Any] = {}
    for name in METHODS.in_order():
        if METHODS.entry(name).info.get("kind") == "tuning":
            out.update(METHODS.get(name).bench_trainers())
    return out


def make_trainer(name: str, backbone: Any, task: Any, samples: list[Any]) -> Trainer:
    """The configuration ``name`` (one of :func:`bench_configs`) wrapped around ``backbone.model``."""
    configs = bench_configs()
    if name not in configs:
        raise ValueError(f"unknown training configuration {name!r}; choose from {', '.join(configs)}")
    return configs[name](backbone, task, samples)


def held_bytes(model: Any, optimizer: Any) -> int:
    """Bytes of the distinct storages behind parameters, buffers, gradients and optimizer state."""
    import torch

    seen: dict[int, int] = {}
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def cpu_step_peak(step: Callable[[], None]) -> int:
    """Highest net CPU allocation (bytes) while ``step`` runs, from the profiler's allocator events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def measure(trainer: Trainer, build: Callable[[Any], Any], chunks: list[Any], device: str,
            warmup: int, memory: bool) -> dict[str, Any]:
    """Step times of the chunks after ``warmup``; with ``memory``, the peak memory of one more step.

    Each batch is built (``build``) just before its step, outside the timing: A³TUNE matches
    the prompts it records while building to the batch it then sees.
    """
    import torch

    model = trainer.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    state: dict[str, Any] = {}

    def step(batch: Any) -> None:
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    pixel_values=batch.pixel_values, position_ids=batch.position_ids)
        loss = trainer.loss(out, batch)
        loss.backward()
        opt.step()
        state["loss"] = float(loss.detach())

    times, cpu = [], []
    for i, chunk in enumerate(chunks[:-1]):
        batch = build(chunk)
        sync_device(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        step(batch)
        sync_device(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"times": times, "cpu": cpu, "trainable_params": trainable}
    if not memory:
        return out
    last = build(chunks[-1])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step(last)
        sync_device(device)
        peak, method = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        held = held_bytes(model, opt)
        peak, method = held + cpu_step_peak(lambda: step(last)), "held tensors + profiler allocator peak"
    return {**out, "peak_mib": round(peak / MIB, 2), "loss": round(state["loss"], 4), "memory_method": method}


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Step-time and peak-memory ratios: each configuration / lora, and a3tune / a3moe (capture only).

    ``cpu_time`` (process CPU seconds per step) is the steadier proxy for step time on a shared CPU.
    """
    by = {r["config"]: r for r in rows}
    pairs = [(name, "lora") for name in by if name != "lora"]
    if "a3tune" in by and "a3moe" in by:
        pairs.append(("a3tune", "a3moe"))
    out = {}
    for a, b in pairs:
        if b not in by:
            continue
        out[f"{a}/{b}"] = {"step_time": round(by[a]["median_step_s"] / by[b]["median_step_s"], 3),
                           "peak_memory": round(by[a]["peak_mib"] / by[b]["peak_mib"], 3)}
        if by[a].get("median_cpu_s") and by[b].get("median_cpu_s"):
            out[f"{a}/{b}"]["cpu_time"] = round(by[a]["median_cpu_s"] / by[b]["median_cpu_s"], 3)
    return out


def bench_train(model: str = "tiny-med-llava", task: str = "phantom-vqa", batch_size: int = 8, steps: int = 10,
                device: str = "auto", shape: str | None = None, shape_scale: str = "full",
                configs: tuple[str, ...] | None = None, warmup: int = 2, rounds: int = 2) -> dict[str, Any]:
    """Side-by-side training steps of ``configs`` on the same batches; ratios against ``lora``.

    The configurations take turns for ``rounds`` rounds (so drift in machine load spreads over
    all of them); the step time is the median over every timed step of a configuration.
    """
    import torch

    from medbench.training import training_batch

    configs = tuple(bench_configs()) if configs is None else configs
    device = resolve_device(device)
    backbone = load_bench_backbone(model, device, shape, shape_scale)
    model = backbone.checkpoint_id if shape else model
    t = TASKS.get(task)()
    n_batches = warmup + steps + 1
    samples = t.load(t.train_split)[: batch_size * n_batches]
    if len(samples) < batch_size * n_batches:
        raise ValueError(f"{task} has {len(samples)} training samples; {n_batches} batches of {batch_size} need more")
    chunks = [samples[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
    images = {s.id: backbone.load_image(s.image_path) for s in samples}
    results: dict[str, dict[str, Any]] = {}
    for round_ in range(rounds):
        for name in configs:
            trainer = make_trainer(name, backbone, t, samples)
            try:
                def build(chunk: list[Any], trainer: Trainer = trainer) -> Any:
                    return training_batch(trainer.backbone, chunk, [images[s.id] for s in chunk]).to(device)

                got = measure(trainer, build, chunks, device, warmup, memory=round_ == 0)
            finally:
                trainer.teardown()
            if round_ == 0:
                results[name] = {"config": name, **got, **trainer.notes}
            else:
                results[name]["times"] += got["times"]
                results[name]["cpu"] += got["cpu"]
    rows = []
    for r in results.values():
        times, cpu = r.pop("times"), r.pop("cpu")
        rows.append({"config": r.pop("config"), "median_step_s": round(statistics.median(times), 5),
                     "min_step_s": round(min(times), 5), "median_cpu_s": round(statistics.median(cpu), 5), **r})
    out_ratios = ratios(rows)
    main = out_ratios.get("a3tune/lora")
    basis = "cpu_time" if device == "cpu" else "step_time"  # wall time on a shared CPU is too noisy
    return {"device": device if not device.startswith("cuda") else torch.cuda.get_device_name(),
            "model": model, "task": task, "batch_size": batch_size, "steps": steps, "rounds": rounds,
            "torch_threads": torch.get_num_threads(), "rows": rows, "ratios": out_ratios, "targets": TARGETS,
            "time_basis": basis,
            "within_targets": None if main is None else (main.get(basis, main["step_time"]) <= TARGETS["step_time"]
                                                         and main["peak_memory"] <= TARGETS["peak_memory"]),
            "memory_method": rows[0]["memory_method"] if rows else None, "versions": versions()}
