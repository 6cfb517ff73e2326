"""A run: (task, backbone, tuning, decoding, method args, seed) → predictions + results.

The runner trains (or reuses) the tuning adapter, decodes the evaluation split in batches,
appends predictions durably (the resume state), captures answer attention for samples with an
RoI, then scores and writes ``results.json`` atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import ConfigError, RunFailed
from medbench.hashing import sample_seed, sha256_obj
from medbench.method import MethodArgsError, parse_params
from medbench.registry import METHODS, TASKS
from medbench.selection import check_limit, eval_split, select_samples
from medbench.types import Prediction, Sample

log = logging.getLogger("medbench")

DEFAULT_MAX_NEW_TOKENS = {"vqa": 16, "report": 80}


@dataclass
class RunConfig:
    """Everything a run depends on; built from the CLI, a YAML file, or code."""

    method: str
    task: str
    model: str = "tiny-med-llava"
    tuning: str | None = None
    decoding: str | None = None
    method_args: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    batch_size: int = 8
    seed: int = 0
    output_dir: str = "results/runs"
    checkpoint_dir: str = "results/checkpoints"
    data_root: str | None = None
    image_root: str | None = None  # a second root for tasks whose images live in another folder
    device: str = "auto"
    device_map: str | None = None
    max_new_tokens: int | None = None
    attention: bool = True
    allow_failures: bool = False
    bertscore_model: str | None = None
    clinical_python: str | None = None
    progress: bool = True
    shard: str | None = None
    split: str | None = None  # evaluate another split than the task's test split (e.g. val)


@dataclass
class Resolved:
    tuning: str
    decoding: str
    decoding_args: dict[str, Any]
    tuning_args: dict[str, Any]


def resolve_methods(cfg: RunConfig) -> Resolved:
    """Split ``--method`` into (tuning, decoding) and route ``--method-args`` to each."""
    kind = METHODS.entry(cfg.method).info["kind"]
    if kind == "tuning":
        if cfg.tuning not in (None, "none", cfg.method):
            raise MethodArgsError(f"--method {cfg.method} is a tuning method; it conflicts with --tuning {cfg.tuning}")
        tuning, decoding = cfg.method, cfg.decoding or "greedy"
    else:
        if cfg.decoding not in (None, cfg.method):
            raise MethodArgsError(f"--method {cfg.method} conflicts with --decoding {cfg.decoding}")
        tuning, decoding = cfg.tuning or "none", cfg.method
    if tuning != "none":
        METHODS.entry(tuning)
        if METHODS.entry(tuning).info["kind"] != "tuning":
            raise MethodArgsError(f"--tuning {tuning} is not a tuning method")
    if METHODS.entry(decoding).info["kind"] != "decoding":
        raise MethodArgsError(f"--decoding {decoding} is not a decoding method")
    dec_cls = METHODS.get(decoding)
    tun_cls = METHODS.get(tuning) if tuning != "none" else None
    dec_fields = {f.name for f in dataclasses.fields(dec_cls.Params)} | set(dec_cls.ALIASES)
    tun_fields = ({f.name for f in dataclasses.fields(tun_cls.Params)} | set(tun_cls.ALIASES)) if tun_cls else set()
    dec_args: dict[str, Any] = {}
    tun_args: dict[str, Any] = {}
    spelled: dict[tuple[str, str], str] = {}
    for key, value in cfg.method_args.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in ("tuning", tuning):
            target, name = tun_args, rest
        elif dot and prefix in ("decoding", decoding):
            target, name = dec_args, rest
        elif key in dec_fields and key in tun_fields:
            raise MethodArgsError(f"method argument {key!r} fits both {decoding} and {tuning}; "
                                  f"write decoding.{key}= or tuning.{key}=")
        elif key in tun_fields:
            target, name = tun_args, key
        else:
            target, name = dec_args, key
        cls = tun_cls if target is tun_args else dec_cls
        if cls is None:
            raise MethodArgsError(f"method argument {key!r} is for a tuning method, but this run has no tuning")
        slot = (cls.name, cls.ALIASES.get(name, name))
        if slot in spelled:
            raise MethodArgsError(f"method argument {slot[1]!r} of {cls.name} given twice "
                                  f"(as {spelled[slot]!r} and {key!r})")
        spelled[slot] = key
        target[name] = value
    dec_cls(**dec_args)  # every argument checked (types, ranges) before anything loads
    if tun_cls is not None:
        tun_cls(**tun_args)
    return Resolved(tuning, decoding, dec_args, tun_args)


def _changed_params(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """The parsed parameters of method ``name`` that ``args`` set away from their defaults.

    Parsed, not as typed: ``top_p=0.8`` and ``top_p=0.80`` (or an alias and its parameter name)
    are one setting, and an argument given at its default value is no setting at all — as in the
    run fingerprint, which hashes the parsed values.
    """
    cls = METHODS.get(name)
    given = dataclasses.asdict(cls(**args).params)
    default = dataclasses.asdict(cls().params)
    skip = getattr(cls, "OPERATIONAL", frozenset())
    return {k: v for k, v in given.items() if k not in skip and v != default.get(k)}


def run_dir_for(cfg: RunConfig, res: Resolved) -> Path:
    model_name = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model
    suffix = ""
    decoding_args = _changed_params(res.decoding, res.decoding_args) if res.decoding_args else {}
    tuning_args = _changed_params(res.tuning, res.tuning_args) if res.tuning_args else {}
    if decoding_args or tuning_args:
        suffix = "-" + sha256_obj({"d": decoding_args, "t": tuning_args})[:8]
    split = f"@{cfg.split}" if cfg.split else ""
    return Path(cfg.output_dir) / model_name / cfg.task / f"{res.tuning}+{res.decoding}{suffix}{split}"


def prepare_tuning(cfg: RunConfig, res: Resolved, backbone: Any, task: Any, device: str) -> tuple[Any, dict]:
    """Train (or reuse by fingerprint) the tuning adapter and attach it.

    Training resumes from the step checkpoints in ``<checkpoint>/state/`` and removes them once the
    ``COMPLETE`` marker is written. Inside a process group every rank trains (data-parallel) and
    rank 0 writes the files.
    """
    if res.tuning == "none":
        return backbone, {}
    method = METHODS.get(res.tuning)(**res.tuning_args)
    fp = method.fingerprint(backbone, task, cfg.seed)
    model_name = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model
    ckpt = Path(cfg.checkpoint_dir) / model_name / task.name / f"{res.tuning}-{fp[:16]}"
    marker = ckpt / "COMPLETE"
    from medbench import ddp, train_state

    if marker.exists() and marker.read_text().strip() == fp:
        log.info("reusing %s checkpoint %s", res.tuning, ckpt)
        if ddp.is_main_process():
            train_state.remove(ckpt / train_state.STATE_DIR)  # left by a kill during the clean-up
    else:
        from medbench.atomic import atomic_write_text

        log.info("training %s on %s (%s)", res.tuning, task.name, ckpt)
        method.train(backbone, task, ckpt, cfg.seed, device)
        if ddp.is_main_process():
            atomic_write_text(marker, fp)
            train_state.remove(ckpt / train_state.STATE_DIR)
        ddp.sync_point()
    return method.apply(backbone, ckpt), {"checkpoint": str(ckpt), "fingerprint": fp,
                                          "params": method.resolved_args()}


def tuning_checkpoint(cfg: RunConfig, res: Resolved, backbone: Any, task: Any) -> Path:
    """Where ``prepare_tuning`` keeps the adapter of this configuration."""
    fp = METHODS.get(res.tuning)(**res.tuning_args).fingerprint(backbone, task, cfg.seed)
    model_name = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model
    return Path(cfg.checkpoint_dir) / model_name / task.name / f"{res.tuning}-{fp[:16]}"


def open_run_task(cfg: RunConfig) -> Any:
    """The run's task from ``data_root`` (and ``image_root``, refused by tasks that do not take one)."""
    if cfg.image_root is None:
        return TASKS.get(cfg.task)(data_root=cfg.data_root)
    from medbench.datacheck import make_task

    return make_task(cfg.task, cfg.data_root, image_root=cfg.image_root)


def run(cfg: RunConfig) -> dict[str, Any]:
    """Execute a run end to end and return the results dict (also written to results.json).

    Under a data-parallel launcher (or ``--shard i/N``) this process decodes its shard only;
    rank 0 merges and scores, the other ranks return a summary of their shard without scores.
    """
    from medbench import ddp
    from medbench import distributed as dist
    from medbench.metrics.attention import attention_protocol, geometry_resolution
    from medbench.models import load_backbone, resolve_device
    from medbench.scoring import score_run

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
    prepare = lambda: prepare_tuning(cfg, res, backbone, task, device)  # noqa: E731
    if info.parallel and not group and res.tuning != "none":
        # shards without a process group: rank 0 trains, the others wait for its COMPLETE marker
        marker = tuning_checkpoint(cfg, res, backbone, task) / "COMPLETE"
        backbone, tuning_info = ddp.main_first(prepare, is_main=info.is_main, wait=lambda: dist.wait_for_file(marker))
    else:  # one process, or a process group whose ranks train data-parallel together
        backbone, tuning_info = prepare()
    train_seconds = time.time() - t_train
    bind = getattr(decoder, "bind", None)
    if callable(bind):  # backbone-dependent defaults (e.g. ControlMLLM's η) enter the fingerprint and run.json
        bind(backbone)
    max_new = cfg.max_new_tokens or getattr(task, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS[task.kind]
    geometry = geometry_record(backbone)
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
    from medbench.atomic import atomic_write_json
    from medbench.predictions import PredictionsWriter

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


def geometry_record(backbone: Any) -> dict[str, Any]:
    return backbone.geometry()


def decode_samples(cfg: RunConfig, task: Any, backbone: Any, decoder: Any, samples: list[Sample],
                   writer: Any, max_new: int) -> None:
    """Decode fixed batches of the planned samples, appending rows for the unfinished ones.

    Batches are cut from the whole planned list, not from the pending remainder, so a resumed
    run decodes every sample in exactly the batch it had in an uninterrupted run (identical
    padding, hence identical floats).
    """
    from tqdm.auto import tqdm

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
    from medbench.engine import answer_attention

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
            grid = maps[i]
            attn = {"grid_size": int(grid.shape[0]), "grid": [float(f"{v:.6g}") for v in grid.reshape(-1)],
                    "image_size": list(images[i].size)}
        out.append(Prediction(
            id=s.id, prompt_hash=batch.prompt_hashes[i], prediction=texts[i], answer=s.answer,
            answer_type=s.answer_type.value, seed=seeds[i], num_tokens=len(gen.tokens[i]), attention=attn,
            guards=gen.guards[i] if gen.guards else 0,
        ))
    return out


def load_run_config(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def parse_config_dict(data: dict[str, Any]) -> RunConfig:
    """A RunConfig from a YAML/JSON mapping; unknown keys are errors."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known - {"method-args"})
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(RunConfig)
    for key, value in data.items():
        if not _fits_type(value, hints[key]):
            raise ValueError(f"config key {key}: expected {hints[key]}, got {type(value).__name__} {value!r:.60}")
    for key in ("batch_size", "max_new_tokens"):
        if data.get(key) is not None and data[key] < 1:
            raise ValueError(f"config key {key} must be at least 1, got {data[key]}")
    check_limit(data.get("limit"))
    if data.get("shard") is not None:
        from medbench.distributed import parse_shard

        parse_shard(data["shard"])
    return RunConfig(**data)


def _fits_type(value: Any, annotation: Any) -> bool:
    """``value`` matches a RunConfig annotation (``str``, ``int``, ``bool``, optionals, dicts)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_fits_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    base = typing.get_origin(annotation) or annotation
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


__all__ = ["RunConfig", "run", "resolve_methods", "run_dir_for", "select_samples", "eval_split", "parse_params"]
