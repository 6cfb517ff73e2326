"""``medbench pretrain --stage vision``: dense supervision of tiny-med-llava's vision tower.

Every visual-token cell gets targets from the phantom v3 masks (:mod:`medbench.vision_targets`):
which structure it shows, whether a lesion covers at least 10 % of it, whether it holds a burnt-in
artefact; and every image whether it has a lesion at all. A small head (layer norm, one linear
layer for the cell targets on each patch token, one for the image target on their mean) sits on the
tower's output at the layer the projector reads (``vision_feature_layer``, CLS token dropped), and
the tower and head are trained with the sum of the four cross-entropies (lesion cells weighted
``lesion_weight`` against the rare positive class). Only the vision tower changes; the projector and
the language model are left as they are and are aligned afterwards by the language stage
(``medbench pretrain --init-from DIR``).

Images are rendered in memory from the ``pretrain`` split's stream (indices past the 2,000 the
cached split holds are further images of the same stream); nothing is written to disk. With
``images=0`` every step renders fresh ones (step ``s`` uses images ``s·B … s·B+B-1``), so no image is
seen twice; rendering then costs more CPU than the tower's step, so ``images=N`` renders a pool of
the first ``N`` images once and steps through it in epochs, each in its own seeded order. The batch
of a step is a function of the step number alone, so a run is deterministic for a seed, thread
count and generator source (its hash is part of the run key and of ``pretrain.json``), and step checkpoints (:mod:`medbench.train_state`) under ``OUTPUT/state`` let a killed run
resume step for step.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("medbench")

PARTS = ("structure", "lesion", "artefact", "image")
CURVE_EVERY = 25


@dataclass(frozen=True)
class VisionPretrainConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    seed: int = 0
    data_seed: int = 0
    lesion_weight: float = 4.0
    images: int = 4000
    vocab_size: int = 1024
    init_from: str | None = None
    checkpoint_every: int = 100


class DenseHead(torch.nn.Module):
    """Cell logits (structures, lesion yes/no, artefact yes/no) per token and image lesion logits."""

    def __init__(self, dim: int, n_structures: int):
        super().__init__()
        self.n_structures = n_structures
        self.norm = torch.nn.LayerNorm(dim)
        self.cells = torch.nn.Linear(dim, n_structures + 4)
        self.image = torch.nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.norm(tokens)
        cells = self.cells(x)
        s = self.n_structures
        return {"structure": cells[..., :s], "lesion": cells[..., s:s + 2], "artefact": cells[..., s + 2:],
                "image": self.image(x.mean(dim=1))}


def patch_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower's patch tokens at the layer the projector reads (``[B, G*G, D]``)."""
    layer = model.config.vision_feature_layer
    if not isinstance(layer, int) or model.config.vision_feature_select_strategy != "default":
        raise ValueError("dense vision pretraining expects one vision_feature_layer and the 'default' strategy")
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[layer]
    return hidden[:, 1:]


def batch_targets(backbone: Any, data_seed: int, indices: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pixel values and stacked targets of the ``pretrain`` images ``indices``."""
    from PIL import Image

    from medbench.vision_targets import cell_targets, render

    grid = backbone.grid_size
    images, parts = [], {k: [] for k in PARTS}
    for index in indices:
        rendered = render(data_seed, "pretrain", index)
        t = cell_targets(rendered, grid)
        images.append(Image.fromarray(rendered.image))
        parts["structure"].append(t.structure.reshape(-1))
        parts["lesion"].append(t.lesion.reshape(-1))
        parts["artefact"].append(t.artefact.reshape(-1))
        parts["image"].append(np.array(t.lesion_image))
    targets = {k: torch.from_numpy(np.stack(v).astype(np.int64)) for k, v in parts.items()}
    return backbone.pixel_values(images), targets


def step_indices(step: int, batch_size: int, images: int, seed: int) -> list[int]:
    """The image indices of a step: fresh ones (``images=0``) or positions in seeded per-epoch orders of a pool."""
    first = step * batch_size
    if images <= 0:
        return list(range(first, first + batch_size))
    out = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, images)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(images)[offset]))
    return out


class ImagePool:
    """Pixel values and targets of the first ``n`` pretrain images, rendered once (in chunks)."""

    def __init__(self, backbone: Any, data_seed: int, n: int, progress: bool):
        from tqdm.auto import tqdm

        from medbench.console import progress_bars_enabled

        pixels, targets = [], []
        bar = tqdm(total=n, desc="render pretrain images", unit="img",
                   disable=not (progress and progress_bars_enabled()))
        for start in range(0, n, 256):
            chunk = range(start, min(n, start + 256))
            pv, tg = batch_targets(backbone, data_seed, chunk)
            pixels.append(pv)
            targets.append(tg)
            bar.update(len(chunk))
        bar.close()
        self.pixels = torch.cat(pixels)
        self.targets = {k: torch.cat([t[k] for t in targets]) for k in PARTS}

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.tensor(indices)
        return self.pixels[idx], {k: v[idx] for k, v in self.targets.items()}


def dense_losses(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                 lesion_weight: float) -> dict[str, torch.Tensor]:
    """The four cross-entropies (means over cells, or over images for ``image``)."""
    ce = torch.nn.functional.cross_entropy
    weight = torch.tensor([1.0, lesion_weight], device=logits["lesion"].device)
    return {
        "structure": ce(logits["structure"].flatten(0, 1), targets["structure"].flatten()),
        "lesion": ce(logits["lesion"].flatten(0, 1), targets["lesion"].flatten(), weight=weight),
        "artefact": ce(logits["artefact"].flatten(0, 1), targets["artefact"].flatten()),
        "image": ce(logits["image"], targets["image"]),
    }


def start_model(init_from: str | None, seed: int, vocab_size: int) -> tuple[Any, Any]:
    """The model and processor a stage starts from: a checkpoint directory, or a fresh random model
    with a tokenizer trained on the phantom pretrain text."""
    if init_from:
        from medbench.backbones.tiny import TinyMedLlava

        start = TinyMedLlava.load(init_from)
        return start.model, start.processor
    from medbench.backbones.tiny import build_random, train_tokenizer
    from medbench.pretrain import tokenizer_corpus
    from medbench.tasks.phantom import PhantomReport, PhantomVQA

    texts = tokenizer_corpus(PhantomVQA().load("pretrain") + PhantomReport().load("pretrain"), ["USER: ASSISTANT:"])
    return build_random(train_tokenizer(texts, vocab_size), seed=seed)


def _run_key(config: VisionPretrainConfig, named: dict[str, torch.Tensor]) -> str:
    from medbench.hashing import sha256_file, sha256_obj
    from medbench.vision_targets import generator_source

    settings = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    start = None
    if config.init_from:
        start = sha256_file(Path(config.init_from) / "model.safetensors")
    return sha256_obj({"stage": "vision", "config": settings, "start": start, "phantom": generator_source(),
                       "params": {n: list(p.shape) for n, p in named.items()}})


def save_step(state_dir: Path, key: str, done: int, seed: int, curves: dict[str, list[float]],
              named: dict[str, torch.Tensor], optimizer: Any, scheduler: Any) -> None:
    """A single-process stage's step checkpoint: its curves ride in the state's ``extra``."""
    from medbench import train_state

    folder = train_state.step_dir(state_dir, done)
    folder.mkdir(parents=True, exist_ok=True)
    train_state.write_rng(folder, 0)
    train_state.write_checkpoint(state_dir, key, train_state.TrainState(
        done, [], random.Random(seed).getstate(), [], extra=curves), named, optimizer, scheduler)


def curve(values: list[float]) -> list[float]:
    """Means of consecutive ``CURVE_EVERY``-step windows, for ``pretrain.json``."""
    return [round(sum(values[i:i + CURVE_EVERY]) / len(values[i:i + CURVE_EVERY]), 4)
            for i in range(0, len(values), CURVE_EVERY)]


def pretrain_vision(output: str | Path, config: VisionPretrainConfig = VisionPretrainConfig(),
                    progress: bool = True) -> dict[str, Any]:
    """Train the vision tower densely and save the whole model (plus ``pretrain.json``) into ``output``."""
    from tqdm.auto import tqdm

    from medbench import train_state
    from medbench.backbones.base import Backbone
    from medbench.backbones.templates import TINY
    from medbench.console import progress_bars_enabled
    from medbench.vision_targets import PHANTOM_VERSION, STRUCTURES, generator_source

    started = time.time()
    output = Path(output)
    model, processor = start_model(config.init_from, config.seed, config.vocab_size)
    backbone = Backbone(model, processor, TINY, checkpoint_id="pretrain-vision")
    torch.manual_seed(config.seed)
    head = DenseHead(model.config.vision_config.hidden_size, len(STRUCTURES))
    for param in model.parameters():
        param.requires_grad_(False)
    tower = model.model.vision_tower
    for param in tower.parameters():
        param.requires_grad_(True)
    named = {f"vision_tower.{n}": p for n, p in tower.named_parameters()}
    named.update({f"head.{n}": p for n, p in head.named_parameters()})
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr, weight_decay=config.weight_decay)
    total = config.steps
    warmup = max(1, int(total * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    key = _run_key(config, named)
    state_dir = output / train_state.STATE_DIR
    found = train_state.latest(state_dir, key)
    train_state.clean_unfinished(state_dir, found)
    curves: dict[str, list[float]] = {k: [] for k in ("loss", *PARTS)}
    start = 0
    if found is not None:
        state = train_state.load_checkpoint(found, key, named, optimizer, scheduler, rank=0)
        start, curves = state.step, {k: [float(x) for x in v] for k, v in state.extra.items()}
        log.warning("resuming the vision stage at step %d of %d", start, total)
    pool = ImagePool(backbone, config.data_seed, config.images, progress) if config.images > 0 else None
    model.train()
    head.train()
    bar = tqdm(total=total, initial=start, desc="pretrain vision tower", unit="step",
               disable=not (progress and progress_bars_enabled()))
    for step in range(start, total):
        indices = step_indices(step, config.batch_size, config.images, config.seed)
        pixels, targets = pool.batch(indices) if pool else batch_targets(backbone, config.data_seed, indices)
        optimizer.zero_grad(set_to_none=True)
        parts = dense_losses(head(patch_features(model, pixels)), targets, config.lesion_weight)
        loss = sum(parts.values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        optimizer.step()
        scheduler.step()
        curves["loss"].append(float(loss.detach()))
        for k, v in parts.items():
            curves[k].append(float(v.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(curves['loss'][-20:]) / len(curves['loss'][-20:]):.3f}",
                        lesion=f"{sum(curves['lesion'][-20:]) / len(curves['lesion'][-20:]):.3f}")
        done = step + 1
        if config.checkpoint_every > 0 and (done % config.checkpoint_every == 0 or done == total):
            save_step(state_dir, key, done, config.seed, curves, named, optimizer, scheduler)
    bar.close()
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    processor.save_pretrained(output)
    record: dict[str, Any] = {
        "stage": "vision", "model_version": 2, "config": asdict(config), "wall_seconds": round(time.time() - started, 1),
        "resumed_at_step": start, "images_seen": total * config.batch_size,
        "distinct_images": config.images or total * config.batch_size,
        "structures": list(STRUCTURES), "phantom_version": PHANTOM_VERSION,
        "phantom_source": generator_source()[:16],
        "torch_threads": torch.get_num_threads(),
        "final_losses": {k: round(sum(v[-50:]) / max(1, len(v[-50:])), 4) for k, v in curves.items()},
        "curve_every": CURVE_EVERY, "curves": {k: curve(v) for k, v in curves.items()},
    }
    if config.init_from:
        previous = Path(config.init_from) / "pretrain.json"
        if previous.exists():
            record["continued_from"] = json.loads(previous.read_text())
    (output / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    train_state.remove(state_dir)
    return record
