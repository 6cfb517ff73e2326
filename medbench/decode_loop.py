"""The decode loop: fixed batches of a run's samples through the decoding method, one prediction
row per sample (an error row when a sample fails), answer attention for samples with an RoI.
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm.auto import tqdm

from medbench import attention_grid
from medbench.engine import answer_attention
from medbench.hashing import sample_seed
from medbench.run_config import RunConfig
from medbench.types import Prediction, Sample

log = logging.getLogger("medbench")

DEFAULT_MAX_NEW_TOKENS = {"vqa": 16, "report": 80}


def max_new_tokens(cfg: RunConfig, task: Any) -> int:
    """``--max-new-tokens``, else the task's own limit, else the default of its kind."""
    return cfg.max_new_tokens or getattr(task, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS[task.kind]


def decode_samples(cfg: RunConfig, task: Any, backbone: Any, decoder: Any, samples: list[Sample],
                   writer: Any, max_new: int) -> None:
    """Decode fixed batches of the planned samples, appending rows for the unfinished ones.

    Batches are cut from the whole planned list, not from the pending remainder, so a resumed
    run decodes every sample in exactly the batch it had in an uninterrupted run (identical
    padding, hence identical floats).
    """
    pending = sum(1 for s in samples if s.id not in writer.done)
    bar = tqdm(total=pending, desc=f"{decoder.name} {task.name}", unit="sample", disable=not cfg.progress)
    for start in range(0, len(samples), cfg.batch_size):
        chunk = samples[start : start + cfg.batch_size]
        todo = {s.id for s in chunk if s.id not in writer.done}
        if not todo:
            continue
        rows = decode_batch(cfg, task, backbone, decoder, chunk, max_new)
        writer.append([r for r in rows if r.id in todo])
        bar.update(len(todo))
    bar.close()


def decode_batch(cfg: RunConfig, task: Any, backbone: Any, decoder: Any, chunk: list[Sample],
                 max_new: int) -> list[Prediction]:
    """Decode one batch; a failing batch is retried sample by sample so errors stay per sample."""
    images, ok, failed = [], [], []
    for s in chunk:
        try:
            images.append(backbone.load_image(s.image_path))
            ok.append(s)
        except Exception as exc:  # unreadable image: an error row, never a silent drop
            failed.append(_error_row(cfg, task, s, f"image: {type(exc).__name__}: {exc}"))
    rows: dict[str, Prediction] = {p.id: p for p in failed}
    if ok:
        try:
            for p in _decode_ok(cfg, task, backbone, decoder, ok, images, max_new):
                rows[p.id] = p
        except Exception as exc:
            if len(ok) == 1:
                log.exception("sample %s failed", ok[0].id)
                rows[ok[0].id] = _error_row(cfg, task, ok[0], f"{type(exc).__name__}: {exc}")
            else:
                for s, im in zip(ok, images):
                    try:
                        rows[s.id] = _decode_ok(cfg, task, backbone, decoder, [s], [im], max_new)[0]
                    except Exception as inner:
                        log.exception("sample %s failed", s.id)
                        rows[s.id] = _error_row(cfg, task, s, f"{type(inner).__name__}: {inner}")
    return [rows[s.id] for s in chunk]


def _error_row(cfg: RunConfig, task: Any, s: Sample, message: str) -> Prediction:
    return Prediction(id=s.id, prompt_hash="", prediction="", answer=s.answer, answer_type=s.answer_type.value,
                      seed=sample_seed(cfg.seed, task.name, s.id), error=message)


def _decode_ok(cfg: RunConfig, task: Any, backbone: Any, decoder: Any, samples: list[Sample], images: list[Any],
               max_new: int) -> list[Prediction]:
    batch = backbone.encode_prompts(samples, images)
    seeds = [sample_seed(cfg.seed, task.name, s.id) for s in samples]
    decoder.prepare(backbone, samples, images)
    gen = decoder.generate(backbone, batch, seeds, max_new)
    texts = [backbone.tokenizer.decode(t, skip_special_tokens=True).strip() for t in gen.tokens]
    postprocess = getattr(backbone, "postprocess", None)
    if callable(postprocess):
        texts = [postprocess(t) for t in texts]
    maps: list[Any] = [None] * len(samples)
    if cfg.attention and any(s.roi is not None for s in samples):
        maps = answer_attention(backbone, batch, gen.tokens)
    out = []
    for i, s in enumerate(samples):
        attn = None
        if maps[i] is not None and s.roi is not None:
            attn = attention_grid.encode(maps[i], images[i].size)
        out.append(Prediction(
            id=s.id, prompt_hash=batch.prompt_hashes[i], prediction=texts[i], answer=s.answer,
            answer_type=s.answer_type.value, seed=seeds[i], num_tokens=len(gen.tokens[i]), attention=attn,
            guards=gen.guards[i] if gen.guards else 0,
        ))
    return out
