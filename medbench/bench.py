"""Performance benchmarks (``medbench bench``): measured side by side in one process.

Benchmarks measure speed; tests never assert wall-clock time.
"""

from __future__ import annotations

import time
from typing import Any


def _sync(device: str) -> None:
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
                 batch_sizes: tuple[int, ...] = (1, 16), n_samples: int = 32, max_new_tokens: int = 16,
                 device: str = "auto", repeats: int = 1, shape: str | None = None,
                 shape_scale: str = "full") -> dict[str, Any]:
    """Samples/s and ms per generated token for each (method, batch size)."""
    import torch

    from medbench.hashing import sample_seed
    from medbench.models import resolve_device
    from medbench.registry import METHODS, TASKS

    device = resolve_device(device)
    backbone = load_bench_backbone(model, device, shape, shape_scale)
    model = backbone.checkpoint_id if shape else model
    t = TASKS.get(task)()
    samples = sorted(t.load(t.eval_split), key=lambda s: s.id)[:n_samples]
    images = [backbone.load_image(s.image_path) for s in samples]
    rows = []
    for name in methods:
        method = METHODS.get(name)()
        for bs in batch_sizes:
            warm = backbone.encode_prompts(samples[:bs], images[:bs])
            method.generate(backbone, warm, [0] * len(samples[:bs]), 2)
            best = None
            tokens = 0
            for _ in range(repeats):
                _sync(device)
                start = time.perf_counter()
                tokens = 0
                for i in range(0, len(samples), bs):
                    batch = backbone.encode_prompts(samples[i:i + bs], images[i:i + bs])
                    seeds = [sample_seed(0, task, s.id) for s in samples[i:i + bs]]
                    with torch.inference_mode():
                        gen = method.generate(backbone, batch, seeds, max_new_tokens)
                    tokens += sum(len(x) + 1 for x in gen.tokens)
                _sync(device)
                elapsed = time.perf_counter() - start
                best = elapsed if best is None else min(best, elapsed)
            rows.append({"method": name, "batch_size": bs, "samples": len(samples), "seconds": round(best, 3),
                         "samples_per_s": round(len(samples) / best, 3),
                         "ms_per_token": round(1000 * best / max(tokens, 1), 3)})
    base = {r["batch_size"]: r["samples_per_s"] for r in rows if r["method"] == methods[0]}
    for r in rows:
        r["speedup_vs_bs1"] = round(r["samples_per_s"] / base[min(base)], 3) if base else None
    return {"device": device, "model": model, "task": task, "torch_threads": torch.get_num_threads(),
            "max_new_tokens": max_new_tokens, "rows": rows}


def bench_train(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A³TUNE vs LoRA training steps side by side (see :mod:`medbench.bench_train`)."""
    from medbench.bench_train import bench_train as run

    return run(*args, **kwargs)
