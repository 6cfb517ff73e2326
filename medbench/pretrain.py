"""``medbench pretrain``: build ``tiny-med-llava`` from scratch on the phantom pretrain splits.

The analogue of LLaVA-Med's own pretraining for the embedded tier: a BPE tokenizer trained on
phantom text, a randomly initialised CLIP + Llama Llava model, and full training (vision tower,
projector and language model) on the ``pretrain`` splits of ``phantom-vqa`` and
``phantom-report``. Deterministic for a given seed and thread count. ``init_from`` continues
training from an existing checkpoint (its tokenizer is kept); the shipped checkpoint records
its whole history in ``pretrain.json``. ``freeze_vision`` keeps the vision tower as it is (after
the dense vision stage, :mod:`medbench.pretrain_vision`) and trains the projector and language model
on top of it. Step checkpoints under ``OUTPUT/state`` (every ``checkpoint_every`` steps) let a
killed run resume step for step when it is started again with the same settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 800
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    vocab_size: int = 1024
    report_fraction: float = 0.25
    init_from: str | None = None
    freeze_vision: bool = False
    checkpoint_every: int = 50


def tokenizer_corpus(samples: list[Any], template_words: list[str]) -> list[str]:
    texts = list(template_words)
    for s in samples:
        texts.append(s.question)
        texts.append(s.answer)
    return texts


def pretrain(output: str | Path, config: PretrainConfig = PretrainConfig(), progress: bool = True) -> dict[str, Any]:
    """Train the tiny model and save it (safetensors + tokenizer + processor) into ``output``."""
    import random

    import torch

    from medbench.backbones.base import Backbone
    from medbench.backbones.templates import TINY
    from medbench.backbones.tiny import build_random, train_tokenizer
    from medbench.hashing import sha256_file, sha256_obj
    from medbench.tasks.phantom import PhantomReport, PhantomVQA
    from medbench.train_state import STATE_DIR, remove
    from medbench.training import Checkpointing, train_supervised

    if config.init_from:
        from medbench.backbones.tiny import checkpoint_version

        if checkpoint_version(config.init_from) >= 2 and not config.freeze_vision:
            from medbench.errors import ConfigError

            raise ConfigError(f"{config.init_from} holds a tiny-med-llava v{checkpoint_version(config.init_from)} "
                              "checkpoint; the lm stage is the v1 recipe and would retrain its dense vision tower: "
                              "use --stage language (or --freeze-vision)")
    started = time.time()
    vqa = PhantomVQA().load("pretrain")
    reports = PhantomReport().load("pretrain")
    if config.init_from:
        from medbench.backbones.tiny import TinyMedLlava

        start = TinyMedLlava.load(config.init_from)
        model, processor = start.model, start.processor
        model.set_attn_implementation({"text_config": "sdpa"})
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(vqa + reports, ["USER: ASSISTANT:"]), config.vocab_size)
        model, processor = build_random(tokenizer, seed=config.seed)
    for param in model.parameters():
        param.requires_grad_(True)
    if config.freeze_vision:
        for param in model.model.vision_tower.parameters():
            param.requires_grad_(False)
    backbone = Backbone(model, processor, TINY, checkpoint_id="pretrain")
    rng = random.Random(config.seed)
    n_reports = int(len(vqa) * config.report_fraction / (1 - config.report_fraction))
    mixed = vqa + [reports[rng.randrange(len(reports))] for _ in range(min(n_reports, 4 * len(reports)))]
    epochs = config.steps * config.batch_size / len(mixed)
    torch.manual_seed(config.seed)
    output = Path(output)
    start_weights = sha256_file(Path(config.init_from) / "model.safetensors") if config.init_from else None
    settings = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    checkpoint = Checkpointing(output / STATE_DIR, config.checkpoint_every,
                               sha256_obj({"stage": "lm", "config": settings, "start": start_weights}))
    losses = train_supervised(
        backbone, mixed, epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        desc="pretrain tiny-med-llava", weight_decay=config.weight_decay, ce_reduction="token", progress=progress,
        checkpoint=checkpoint if config.checkpoint_every > 0 else None,
    )
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    processor.save_pretrained(output)
    from medbench.backbones.tiny import checkpoint_version

    # a frozen tower keeps its version (the dense v2 tower stays v2); otherwise this is the v1 recipe
    version = checkpoint_version(config.init_from) if config.init_from and config.freeze_vision else 1
    record = {
        "stage": "lm", "model_version": version, "config": asdict(config), "wall_seconds": round(time.time() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_samples": len(mixed), "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "loss_curve": [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 4) for i in range(0, len(losses), 50)],
        "phantom_version": PhantomVQA.version, "torch_threads": torch.get_num_threads(),
    }
    if config.init_from:
        previous = Path(config.init_from) / "pretrain.json"
        if previous.exists():
            record["continued_from"] = json.loads(previous.read_text())
    (output / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    remove(output / STATE_DIR)
    return record
