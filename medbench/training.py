"""Supervised training shared by ``pretrain``, ``lora`` and ``a3tune``.

Batches are right-padded prompt + answer sequences; prompt and image positions get label -100,
so the loss covers the answer tokens (and EOS) only. ``ce_reduction="per_sample"`` averages
tokens within each sample, then samples — the reference's batch-1 behaviour at any batch size.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medbench.backbones.base import Backbone
from medbench.types import Sample

IGNORE = -100
log = logging.getLogger("medbench")


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


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy and the answer-token mask, both ``[B, T-1]``."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=IGNORE, reduction="none",
    ).view(shift_labels.shape)
    return losses, (shift_labels != IGNORE).float()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "per_sample") -> torch.Tensor:
    """Next-token cross-entropy on answer tokens (Eq. 11), reduced per sample or per token."""
    losses, valid = _token_losses(logits, labels)
    if reduction == "token":
        return (losses * valid).sum() / valid.sum().clamp(min=1)
    per_sample = (losses * valid).sum(1) / valid.sum(1).clamp(min=1)
    return per_sample.mean()


def answer_loss_sum(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "per_sample") -> tuple[torch.Tensor, int]:
    """``(sum, count)`` whose ratio is :func:`answer_loss`: per-sample means and samples, or tokens."""
    losses, valid = _token_losses(logits, labels)
    if reduction == "token":
        return (losses * valid).sum(), int(valid.sum())
    return ((losses * valid).sum(1) / valid.sum(1).clamp(min=1)).sum(), int(labels.shape[0])


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often :func:`train_supervised` saves step checkpoints (see :mod:`medbench.train_state`)."""

    state_dir: Path
    every: int = 50
    run_key: str = ""


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
    checkpoint: Checkpointing | None = None,
    grad_accum: int = 1,
    lr_schedule: str = "linear",
) -> list[float]:
    """AdamW + warm-up and linear or cosine decay (:func:`lr_factor`); returns the loss curve.

    An optimizer step takes ``batch_size × grad_accum`` samples, in ``grad_accum`` micro-batches
    of ``batch_size`` whose losses are scaled to the step's samples (CE per sample or per token of
    the whole step, ``extra_loss`` a mean over them): the step equals one batch of all of them up
    to float summation order. Under DeepSpeed the whole step goes through as one batch.

    With ``checkpoint`` the run saves its state every ``checkpoint.every`` steps and at the end, and
    resumes from the newest complete state of the same run key, step for step. Inside a
    ``torch.distributed`` process group (torchrun / accelerate launch) it trains data-parallel:
    each rank takes its slice of every global batch of ``batch_size`` and gradients are summed so
    that a step equals the single-process step up to float summation order (``extra_loss`` is
    taken as a mean over the samples it sees). Under ``accelerate launch`` with a DeepSpeed config
    the model and optimizer go to DeepSpeed ZeRO (:mod:`medbench.zero`) with the same slicing and
    scaling. Rank 0 writes the checkpoints. An ``extra_loss`` with
    running statistics saves and restores them through ``checkpoint_state()`` /
    ``restore_checkpoint_state(state)`` (JSON).
    """
    from medbench import train_state
    from medbench.console import progress_bars_enabled
    from medbench.ddp import current
    from medbench.hashing import sha256_obj

    model = backbone.model
    device = backbone.device
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    if not params:
        raise RuntimeError("no trainable parameters")
    dp = current(device)
    order_rng = random.Random(seed)
    torch.manual_seed(seed)
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be ≥ 1, got {grad_accum}")
    step_n = batch_size * grad_accum
    steps_per_epoch = max(1, (len(samples) + step_n - 1) // step_n)
    total = max(1, int(round(steps_per_epoch * epochs)))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    zero = _zero_trainer(model, optimizer, step_n, max_grad_norm, dp)
    warmup = warmup_steps(lr_schedule, total, warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer if zero is None else zero.base_optimizer, lambda s: lr_factor(lr_schedule, s, warmup, total),
    )
    losses: list[float] = []
    order: list[int] = []
    start = 0
    key = ""
    if checkpoint is not None:
        key = sha256_obj({"run": checkpoint.run_key, "ids": [s.id for s in samples], "epochs": epochs,
                          "batch_size": batch_size, "lr": lr, "seed": seed, "weight_decay": weight_decay,
                          "warmup_ratio": warmup_ratio, "ce_reduction": ce_reduction, "clip": max_grad_norm,
                          "params": {n: list(p.shape) for n, p in named.items()},
                          **({"grad_accum": grad_accum, "lr_schedule": lr_schedule}
                             if (grad_accum, lr_schedule) != (1, "linear") else {})})
        state = _resume(checkpoint, key, named, optimizer, scheduler, dp, zero)
        if state is not None:
            start, order, losses = state.step, state.order, state.losses
            order_rng.setstate(state.order_rng)
            if state.extra is not None and hasattr(extra_loss, "restore_checkpoint_state"):
                extra_loss.restore_checkpoint_state(state.extra)
            if dp.is_main:
                log.warning("resuming %s at step %d of %d", desc, start, total)
    model.train()
    bar = tqdm(total=total, initial=start, desc=desc, unit="step",
               disable=not (progress and dp.is_main and progress_bars_enabled()))
    for step in range(start, total):
        if len(order) < step_n:
            fresh = list(range(len(samples)))
            order_rng.shuffle(fresh)
            order.extend(fresh)
        idx, order = order[:step_n], order[step_n:]
        if zero is not None:
            loss = _zero_step(backbone, zero, params, [samples[i] for i in dp.local(idx)], len(idx), ce_reduction,
                              extra_loss, dp)
        else:
            optimizer.zero_grad(set_to_none=True)
            if grad_accum > 1:
                loss = _accumulated_step(backbone, params, [samples[i] for i in idx], batch_size, ce_reduction,
                                         extra_loss, dp)
            elif dp.active:
                loss = _local_step(backbone, params, [samples[i] for i in dp.local(idx)], len(idx), ce_reduction,
                                   extra_loss, dp)
            else:
                chunk = [samples[i] for i in idx]
                batch = training_batch(backbone, chunk, [backbone.load_image(s.image_path) for s in chunk]).to(device)
                out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            pixel_values=batch.pixel_values, position_ids=batch.position_ids)
                loss = answer_loss(out.logits, batch.labels, ce_reduction)
                if extra_loss is not None:
                    loss = loss + extra_loss(out, batch)
                loss.backward()
                loss = loss.detach()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
        scheduler.step()
        losses.append(float(loss))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        done = step + 1
        if checkpoint is not None and checkpoint.every > 0 and (done % checkpoint.every == 0 or done == total):
            _save(checkpoint, key, train_state.TrainState(done, list(order), order_rng.getstate(), list(losses),
                                                          dp.world_size, _extra_state(extra_loss),
                                                          None if zero is None else zero.stage),
                  named, optimizer, scheduler, dp, zero)
    bar.close()
    model.eval()
    return losses


def warmup_steps(schedule: str, total: int, ratio: float) -> int:
    """Warm-up length: ``max(1, ⌊total·ratio⌋)`` (medbench's linear), ``⌈total·ratio⌉`` (cosine, as
    transformers' Trainer computes it for the reference)."""
    if schedule == "cosine":
        return math.ceil(total * ratio)
    return max(1, int(total * ratio))


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based).

    ``linear``: ``min((s+1)/w, (T−s)/(T−w))``. ``cosine`` (transformers'
    ``get_cosine_schedule_with_warmup``, the reference's ``lr_scheduler_type cosine``): ``s/w``
    during warm-up, then ``½(1 + cos(π·(s−w)/(T−w)))``.
    """
    if schedule == "linear":
        return min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    if schedule == "cosine":
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (linear or cosine)")


def _accumulated_step(backbone: Backbone, params: list[torch.nn.Parameter], chunk: list[Sample], micro: int,
                      ce_reduction: str, extra_loss: Callable[[Any, TrainBatch], torch.Tensor] | None,
                      dp: Any) -> torch.Tensor:
    """Gradients of one step over ``chunk`` in micro-batches of ``micro`` (each rank: its slice of each)."""
    n = len(chunk)
    tokens = float(sum(len(backbone.encode_answer(s.answer)) for s in chunk)) if ce_reduction == "token" else None
    total = torch.zeros((), device=backbone.device)
    for start in range(0, n, micro):
        mine = dp.local(chunk[start:start + micro])
        loss = _slice_loss(backbone, backbone.model, mine, n, ce_reduction, extra_loss, dp, token_total=tokens)
        if mine:
            loss.backward()
        total = total + loss.detach()
    dp.sync_grads(params)
    return dp.all_sum(total)


def _slice_loss(backbone: Backbone, forward: Callable[..., Any], chunk: list[Sample], global_n: int,
                ce_reduction: str, extra_loss: Callable[[Any, TrainBatch], torch.Tensor] | None,
                dp: Any, token_total: float | None = None) -> torch.Tensor:
    """This rank's share of the global batch loss: summed over ranks it is the one-process loss.

    ``token_total`` (accumulation): the answer tokens of the whole step, the ``token`` denominator.
    """
    device = backbone.device
    total = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    if chunk:
        batch = training_batch(backbone, chunk, [backbone.load_image(s.image_path) for s in chunk]).to(device)
        out = forward(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      pixel_values=batch.pixel_values, position_ids=batch.position_ids)
        total, n = answer_loss_sum(out.logits, batch.labels, ce_reduction)
        count = torch.tensor(float(n), device=device)
    if ce_reduction == "token":
        denom = torch.tensor(token_total, device=device) if token_total is not None else dp.all_sum(count.clone())
    else:
        denom = torch.tensor(float(global_n), device=device)
    loss = total / denom.clamp(min=1)
    if chunk and extra_loss is not None:
        loss = loss + extra_loss(out, batch) * (len(chunk) / global_n)
    return loss


def _local_step(backbone: Backbone, params: list[torch.nn.Parameter], chunk: list[Sample], global_n: int,
                ce_reduction: str, extra_loss: Callable[[Any, TrainBatch], torch.Tensor] | None, dp: Any) -> torch.Tensor:
    """Forward/backward of this rank's slice, scaled so that summed gradients equal the full batch's."""
    loss = _slice_loss(backbone, backbone.model, chunk, global_n, ce_reduction, extra_loss, dp)
    if chunk:
        loss.backward()
    dp.sync_grads(params)
    return dp.all_sum(loss.detach().clone())


def _zero_trainer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
                  max_grad_norm: float, dp: Any) -> Any:
    """The DeepSpeed ZeRO wrapper when the launcher asked for DeepSpeed, else ``None``."""
    from medbench import zero

    if not zero.requested():
        return None
    if batch_size < dp.world_size:
        from medbench.errors import ConfigError

        raise ConfigError(f"batch_size={batch_size} is smaller than the {dp.world_size} DeepSpeed processes: "
                          "every rank needs a sample of each batch")
    return zero.ZeroTrainer.prepare(model, optimizer, micro_batch=-(-batch_size // dp.world_size),
                                    world_size=dp.world_size, max_grad_norm=max_grad_norm)


def _zero_step(backbone: Backbone, zero: Any, params: list[torch.nn.Parameter], chunk: list[Sample], global_n: int,
               ce_reduction: str, extra_loss: Callable[[Any, TrainBatch], torch.Tensor] | None,
               dp: Any) -> torch.Tensor:
    """One DeepSpeed step on this rank's slice; the loss is scaled so DeepSpeed's gradient mean is the batch's.

    Every trainable parameter joins the graph (times zero) so that ZeRO's per-bucket gradient
    reduction sees the same parameters on every rank, whatever A³MoE's routing used.
    """
    loss = _slice_loss(backbone, zero.forward, chunk, global_n, ce_reduction, extra_loss, dp)
    loss = loss + 0.0 * sum(p.sum() for p in params)
    zero.backward_and_step(loss * dp.world_size)
    return dp.all_sum(loss.detach().clone())


def _resume(checkpoint: Checkpointing, key: str, named: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
            scheduler: Any, dp: Any, zero: Any = None) -> Any:
    """Load the newest complete step checkpoint of ``key`` (``None``: start fresh); drop unfinished ones."""
    from medbench import train_state

    found = train_state.latest(checkpoint.state_dir, key)
    dp.barrier()  # every rank has chosen before rank 0 removes the others
    if dp.is_main:
        train_state.clean_unfinished(checkpoint.state_dir, found)
    if found is None:
        return None
    return train_state.load_checkpoint(found, key, named, optimizer, scheduler, dp.rank, zero)


def _extra_state(extra_loss: Any) -> Any:
    """JSON state of an extra loss with running statistics (``checkpoint_state``), else ``None``."""
    return extra_loss.checkpoint_state() if hasattr(extra_loss, "checkpoint_state") else None


def _save(checkpoint: Checkpointing, key: str, state: Any, named: dict[str, torch.Tensor],
          optimizer: torch.optim.Optimizer, scheduler: Any, dp: Any, zero: Any = None) -> None:
    """Every rank saves its generator states (and ZeRO partition), then rank 0 the rest (``meta.json`` last)."""
    from medbench import train_state

    folder = train_state.step_dir(checkpoint.state_dir, state.step)
    folder.mkdir(parents=True, exist_ok=True)
    train_state.write_rng(folder, dp.rank)
    if zero is not None:
        train_state.write_partition(folder, dp.rank, zero.partition_state())
    dp.barrier()
    if dp.is_main:
        train_state.write_checkpoint(checkpoint.state_dir, key, state, named, optimizer, scheduler)
