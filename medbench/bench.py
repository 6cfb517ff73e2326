"""Performance benchmarks (``medbench bench``): measured side by side in one process.

Benchmarks measure speed; tests never assert wall-clock time.
"""

from __future__ import annotations

import time
from typing import Any


def sync_device(device: str) -> None:
    """Wait for queued CUDA work (timings on a GPU are otherwise of the launch only)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def load_bench_backbone(model: str, device: str, shape: str | None = None, shape_scale: str = "full") -> Any:
    """The named/local backbone, or with ``shape`` a random-weight model of that real architecture."""
    if shape is None:
        from medbench.models import load_backbone

        return load_backbone(model, device=device)
    from medbench import attention
    from medbench.backbones.shapes import build_shape

    backbone = build_shape(shape, shape_scale, device)
    attention.install(backbone.model)
    return backbone


def bench_decode(model: str = "tiny-med-llava", task: str = "phantom-vqa", methods: tuple[str, ...] = ("greedy",),
                 batch_sizes: tuple[int, ...] = (1, 16), n_samples: int = 64, max_new_tokens: int = 16,
                 device: str = "auto", repeats: int = 3, shape: str | None = None,
                 shape_scale: str = "full", warmup: int = 1, progress: bool = False) -> dict[str, Any]:
    """Samples/s and ms per generated token for each (method, batch size), with ratios.

    Every configuration first decodes ``warmup`` untimed passes over the samples; then the timed
    passes take turns — each of the ``repeats`` rounds times every configuration once, in a rotated
    order — so that a drift in machine load (other processes, clock changes) falls on all of them
    alike. A row reports the median pass (and the spread max/min of its passes); ``speedup_vs_bs1``
    divides its samples/s by the first method's at the smallest batch size, ``token_time_vs_first``
    its ms/token by the first method's at the same batch size.
    """
    import statistics

    import torch
    from tqdm.auto import tqdm

    from medbench.console import progress_bars_enabled
    from medbench.hashing import sample_seed
    from medbench.models import resolve_device
    from medbench.registry import METHODS, TASKS

    if n_samples < 1 or repeats < 1 or warmup < 0 or not methods or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("bench decode needs samples ≥ 1, repeats ≥ 1, warmup ≥ 0, methods and batch sizes ≥ 1")
    device = resolve_device(device)
    backbone = load_bench_backbone(model, device, shape, shape_scale)
    model = backbone.checkpoint_id if shape else model
    t = TASKS.get(task)()
    samples = sorted(t.load(t.eval_split), key=lambda s: s.id)[:n_samples]
    images = [backbone.load_image(s.image_path) for s in samples]
    configs = [(name, bs) for name in methods for bs in batch_sizes]
    instances = {name: METHODS.get(name)() for name in methods}
    for method in instances.values():  # as the runner does: backbone-dependent defaults (ControlMLLM's η)
        bind = getattr(method, "bind", None)
        if callable(bind):
            bind(backbone)

    def one_pass(name: str, bs: int) -> tuple[float, int]:
        method = instances[name]
        sync_device(device)
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(samples), bs):
            batch = backbone.encode_prompts(samples[i:i + bs], images[i:i + bs])
            seeds = [sample_seed(0, task, s.id) for s in samples[i:i + bs]]
            method.prepare(backbone, samples[i:i + bs], images[i:i + bs])  # per batch, as the runner (RoIs, report mode)
            with torch.inference_mode():
                gen = method.generate(backbone, batch, seeds, max_new_tokens)
            tokens += sum(len(x) + 1 for x in gen.tokens)
        sync_device(device)
        return time.perf_counter() - start, tokens

    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    tokens: dict[tuple[str, int], int] = {}
    bar = tqdm(total=len(configs) * (warmup + repeats), desc="bench decode", unit="pass",
               disable=not (progress and progress_bars_enabled()))
    for config in configs:
        for _ in range(warmup):
            one_pass(*config)
            bar.update(1)
    for round_ in range(repeats):
        shift = round_ % len(configs)
        for config in configs[shift:] + configs[:shift]:
            elapsed, tokens[config] = one_pass(*config)
            times[config].append(elapsed)
            bar.update(1)
    bar.close()
    rows = []
    for name, bs in configs:
        passes = times[(name, bs)]
        median = statistics.median(passes)
        rows.append({"method": name, "batch_size": bs, "samples": len(samples), "seconds": round(median, 3),
                     "spread": round(max(passes) / min(passes), 3),
                     "samples_per_s": round(len(samples) / median, 3),
                     "ms_per_token": round(1000 * median / max(tokens[(name, bs)], 1), 3)})
    first = {r["batch_size"]: r for r in rows if r["method"] == methods[0]}
    for r in rows:
        r["speedup_vs_bs1"] = round(r["samples_per_s"] / first[min(first)]["samples_per_s"], 3)
        r["token_time_vs_first"] = round(r["ms_per_token"] / first[r["batch_size"]]["ms_per_token"], 3)
    return {"device": device, "model": model, "task": task, "torch_threads": torch.get_num_threads(),
            "max_new_tokens": max_new_tokens, "warmup": warmup, "repeats": repeats, "statistic": "median",
            "rows": rows}
