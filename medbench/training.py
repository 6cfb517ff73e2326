"""Supervised training shared by ``pretrain``, ``lora`` and ``a3tune``.

Batches are right-padded prompt + answer sequences; prompt and image positions get label -100,
so the loss covers the answer tokens (and EOS) only. ``ce_reduction="per_sample"`` averages
tokens within each sample, then samples — the reference's batch-1 behaviour at any batch size.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from medbench.backbones.base import Backbone
from medbench.types import Sample

IGNORE = -100


@dataclass
class TrainBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    position_ids: torch.Tensor

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels,
                                                   self.pixel_values, self.position_ids)))


def training_batch(backbone: Backbone, samples: list[Sample], images: list[Any]) -> TrainBatch:
    """Right-padded prompt+answer ids with answer-only labels."""
    seqs, labels = [], []
    for s in samples:
        prompt = backbone.tokenize_prompt(backbone.prompt_text(s))
        answer = backbone.encode_answer(s.answer)
        seqs.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    width = max(len(s) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, width), backbone.pad_token_id, dtype=torch.long)
    lab = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(s)] = 1
    position = torch.arange(width).expand(n, width).clone()
    return TrainBatch(ids, mask, lab, backbone.pixel_values(images), position)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "per_sample") -> torch.Tensor:
    """Next-token cross-entropy on answer tokens (Eq. 11), reduced per sample or per token."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=IGNORE, reduction="none",
    ).view(shift_labels.shape)
    valid = (shift_labels != IGNORE).float()
    if reduction == "token":
        return (losses * valid).sum() / valid.sum().clamp(min=1)
    per_sample = (losses * valid).sum(1) / valid.sum(1).clamp(min=1)
    return per_sample.mean()


def train_supervised(
    backbone: Backbone,
    samples: list[Sample],
    *,
    epochs: float,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.03,
    ce_reduction: str = "per_sample",
    extra_loss: Callable[[Any, TrainBatch], torch.Tensor] | None = None,
    max_grad_norm: float = 1.0,
    progress: bool = True,
) -> list[float]:
    """AdamW + linear warm-up/decay over the trainable parameters; returns the loss curve."""
    model = backbone.model
    device = backbone.device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters")
    order_rng = random.Random(seed)
    torch.manual_seed(seed)
    steps_per_epoch = max(1, (len(samples) + batch_size - 1) // batch_size)
    total = max(1, int(round(steps_per_epoch * epochs)))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(total * warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    model.train()
    losses: list[float] = []
    order: list[int] = []
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="step")
    for _ in range(total):
        if len(order) < batch_size:
            fresh = list(range(len(samples)))
            order_rng.shuffle(fresh)
            order.extend(fresh)
        idx, order = order[:batch_size], order[batch_size:]
        chunk = [samples[i] for i in idx]
        batch = training_batch(backbone, chunk, [backbone.load_image(s.image_path) for s in chunk]).to(device)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    pixel_values=batch.pixel_values, position_ids=batch.position_ids)
        loss = answer_loss(out.logits, batch.labels, ce_reduction)
        if extra_loss is not None:
            loss = loss + extra_loss(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    bar.close()
    model.eval()
    return losses
