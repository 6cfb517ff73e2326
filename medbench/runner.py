"""A run: (task, backbone, tuning, decoding, method args, seed) → predictions + results.

The runner trains (or reuses) the tuning adapter, decodes the evaluation split in batches,
appends predictions durably (the resume state), captures answer attention for samples with an
RoI, then scores and writes ``results.json`` atomically. Its parts live in their own modules:
``run_config`` (RunConfig, method routing, run directory), ``selection`` (split and samples),
``tuning_plan`` (the adapter and its fingerprint), ``decode_loop`` (batches and error rows),
``distributed`` (shards and their merge), ``scoring`` (results.json).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from typing import Any

from medbench import ddp
from medbench import distributed as dist
from medbench.atomic import atomic_write_json
from medbench.decode_loop import DEFAULT_MAX_NEW_TOKENS, decode_batch, decode_samples, max_new_tokens
from medbench.errors import ConfigError, RunFailed
from medbench.hashing import sha256_obj
from medbench.method import parse_params
from medbench.metrics.attention import attention_protocol, geometry_resolution
from medbench.models import load_backbone, resolve_device
from medbench.predictions import PredictionsWriter
from medbench.registry import METHODS
from medbench.run_config import (
    Resolved,
    RunConfig,
    open_run_task,
    parse_config_dict,
    resolve_methods,
    run_dir_for,
)
from medbench.scoring import score_run
from medbench.selection import check_limit, eval_split, select_samples
from medbench.tuning_plan import plan_tuning, prepare_tuning, tuning_checkpoint

log = logging.getLogger("medbench")


def run(cfg: RunConfig) -> dict[str, Any]:
    """Execute a run end to end and return the results dict (also written to results.json).

    Under a data-parallel launcher (or ``--shard i/N``) this process decodes its shard only;
    rank 0 merges and scores, the other ranks return a summary of their shard without scores.
    """
    started = time.time()
    info = dist.resolve(cfg.shard)
    if info.parallel and cfg.device_map:
        raise ConfigError("--device-map shards one model in one process; do not combine it with data-parallel ranks")
    check_limit(cfg.limit)
    res = resolve_methods(cfg)
    task = open_run_task(cfg)
    decoder = METHODS.get(res.decoding)(**res.decoding_args)
    split = eval_split(task, cfg.split)
    if cfg.split == task.eval_split:
        cfg = dataclasses.replace(cfg, split=None)  # the default split, spelled out: one run, one directory
    samples = select_samples(task, cfg.limit, split)
    decoder.check_samples(samples)
    device = resolve_device(cfg.device)
    if device == "cuda" and info.source == "env":
        device = f"cuda:{info.local_rank}"
    group = dist.init_group(info)
    mine = dist.shard_samples(samples, info) if info.parallel else samples
    if info.parallel:
        log.warning("rank %d of %d (%s): %d of %d samples on %s", info.rank, info.world_size, info.source,
                    len(mine), len(samples), device)
    backbone = load_backbone(cfg.model, device=device, device_map=cfg.device_map)
    decoder.check_backbone(backbone)
    t_train = time.time()
    plan = plan_tuning(cfg, res, backbone, task)
    tuning_info: dict[str, Any] = {}
    if plan is not None and info.parallel and not group:
        # shards without a process group: rank 0 trains, the others wait for its COMPLETE marker
        backbone, tuning_info = ddp.main_first(lambda: plan.prepare(backbone, task, cfg.seed, device),
                                               is_main=info.is_main, wait=lambda: dist.wait_for_file(plan.marker))
    elif plan is not None:  # one process, or a process group whose ranks train data-parallel together
        backbone, tuning_info = plan.prepare(backbone, task, cfg.seed, device)
    train_seconds = time.time() - t_train
    bind = getattr(decoder, "bind", None)
    if callable(bind):  # backbone-dependent defaults (e.g. ControlMLLM's η) enter the fingerprint and run.json
        bind(backbone)
    max_new = max_new_tokens(cfg, task)
    geometry = backbone.geometry()
    # The backbone fixes the grid and frame, so the fingerprint takes the protocol without them.
    fingerprint = sha256_obj({
        "task": task.name, "task_version": task.version, "split": split,
        "samples": sha256_obj([(s.id, s.question, s.answer, s.answer_type.value) for s in samples]),
        "template": backbone.template.prompt, "protocol": task.metric_protocol,
        "decoding": res.decoding, "decoding_args": decoder.resolved_args(),
        "tuning": res.tuning, "tuning_fingerprint": tuning_info.get("fingerprint"),
        "backbone": backbone.checkpoint_id, "image_backend": getattr(backbone, "image_backend", "torchvision"), "seed": cfg.seed,
        "max_new_tokens": max_new, "attention": attention_protocol() if cfg.attention else None,
    })
    out_dir = run_dir_for(cfg, res)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"task": task.name, "model": cfg.model, "decoding": res.decoding, "tuning": res.tuning}
    if info.parallel:
        dist.retire_stale(out_dir, info, fingerprint)
        writer = PredictionsWriter(dist.rank_path(out_dir, info.rank), fingerprint,
                                   {**meta, "rank": info.rank, "world_size": info.world_size})
        mine_ids = {s.id for s in mine}
        writer.done.update({k: v for k, v in dist.done_elsewhere(out_dir, info, fingerprint).items()
                            if k in mine_ids and k not in writer.done})
    else:
        dist.fold_rank_files(out_dir, fingerprint, meta)
        writer = PredictionsWriter(out_dir / "predictions.jsonl", fingerprint, meta)
    run_record = {
        "fingerprint": fingerprint, "config": dataclasses.asdict(cfg), "tuning": res.tuning,
        "decoding": res.decoding, "method_args": {"decoding": decoder.resolved_args(), "tuning": tuning_info.get("params", {})},
        "tuning_checkpoint": tuning_info.get("checkpoint"), "planned": len(samples),
        "geometry": geometry, "max_new_tokens": max_new,
        "attention_protocol": attention_protocol(**geometry_resolution(geometry)) if cfg.attention else None,
        "task_version": task.version, "metric_protocol": task.metric_protocol,
    }
    if info.is_main:
        atomic_write_json(out_dir / "run.json", run_record)
    pending = [s for s in mine if s.id not in writer.done]
    t_decode = time.time()
    decode_samples(cfg, task, backbone, decoder, mine, writer, max_new)
    decode_seconds = time.time() - t_decode
    if info.parallel:
        dist.write_marker(out_dir, info, fingerprint, len(mine))
        if group:
            dist.barrier(group)
        if not info.is_main:
            dist.finish_group(group)
            return {"task": task.name, "model": cfg.model, "tuning": res.tuning, "decoding": res.decoding,
                    "metrics": {}, "counts": {"rank": info.rank, "world_size": info.world_size,
                                              "shard": len(mine), "decoded": len(pending)},
                    "run_dir": str(out_dir)}
        if not group:
            dist.wait_for_ranks(out_dir, info, fingerprint)
        try:
            dist.merge(out_dir, [s.id for s in samples], info, fingerprint, meta)
        finally:
            dist.finish_group(group)
    timing = {"started_at": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
              "train_seconds": round(train_seconds, 3), "decode_seconds": round(decode_seconds, 3),
              "decoded_samples": len(pending),
              "samples_per_second": round(len(pending) / decode_seconds, 4) if pending and decode_seconds > 0 else None,
              "world_size": info.world_size}
    report_options = {"bertscore_model": cfg.bertscore_model, "clinical_python": cfg.clinical_python}
    results = score_run(out_dir, samples=samples, task=task, report_options=report_options, extra={
        "limit": cfg.limit, "seed": cfg.seed, "timing": timing, "skipped": [dataclasses.asdict(s) for s in task.skipped],
    })
    failed = results["counts"].get("failed", 0)
    if failed and not cfg.allow_failures:
        raise RunFailed(f"{failed} sample(s) failed; see error rows in {out_dir / 'predictions.jsonl'} "
                        "(rerun to retry them, or pass --allow-failures)")
    return results


__all__ = ["RunConfig", "Resolved", "run", "resolve_methods", "run_dir_for", "open_run_task", "parse_config_dict",
           "select_samples", "eval_split", "check_limit", "prepare_tuning", "tuning_checkpoint",
           "decode_samples", "decode_batch", "DEFAULT_MAX_NEW_TOKENS", "parse_params"]
