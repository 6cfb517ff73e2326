"""A run's configuration: ``RunConfig`` (from flags, a YAML file or code), the routing of
``--method``/``--tuning``/``--decoding`` and ``--method-args`` to the two methods, the run
directory, and the task it opens.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.datacheck import make_task
from medbench.distributed import parse_shard
from medbench.hashing import sha256_obj
from medbench.method import MethodArgsError
from medbench.registry import METHODS, TASKS
from medbench.selection import check_limit


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
           flag: bool = True, flag_name: str | None = None, group: str = "how",
           commands: tuple[str, ...] = ("run", "train"), **argparse_kwargs: Any) -> Any:
    """A :class:`RunConfig` field with its command-line flag: ``help`` (``{default}`` is replaced by the
    field's default), the flag's argument group (``what``/``how``/``report``), the commands that
    have it, and any other ``argparse`` keyword (``type``, ``choices``, ``metavar``, ``action`` …).
    ``flag=False``: a YAML/code-only key; ``flag_name`` another spelling than ``--field-name``.
    Flags default to ``None`` (not given), so a ``--config`` file's value stays unless the flag is
    given. No default and no ``factory``: a required field."""
    meta = {"help": help, "flag": flag, "flag_name": flag_name, "group": group, "commands": commands,
            "argparse": argparse_kwargs}
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass
class RunConfig:
    """Everything a run depends on; built from the CLI, a YAML file, or code.

    Each field declares its flag (help text, group, commands) once, here: ``medbench run``/``train``
    generate their flags from these fields, and ``--config`` files take the same names as keys.
    """

    method: str = option(help="decoding (greedy, beam, nucleus, …) or tuning (lora, a3tune) method", group="what")
    task: str = option(help="task name, e.g. phantom-vqa (see `medbench list tasks`)", group="what")
    model: str = option("tiny-med-llava", "backbone name or local checkpoint directory (default {default})",
                        group="what")
    tuning: str | None = option(None, "tuning to compose with a decoding method: none|lora|a3tune", group="what")
    decoding: str | None = option(None, "decoding method after a tuning method (default greedy)", group="what")
    method_args: dict[str, Any] = option(
        factory=dict, help="method hyperparameters, e.g. top_p=0.8; repeated flags add up, a name given twice is an error; "
        "they override --config's method_args; prefix tuning./decoding. when a name fits both", group="what",
        nargs="*", action="extend", metavar="K=V")
    limit: int | None = option(None, "first N ≥ 1 samples only (for quick checks; marked in tables); leave it out "
                               "for every sample", type=int)
    batch_size: int = option(8, "samples per forward pass (default {default})", type=int)
    seed: int = option(0, "global seed (default {default}); per-sample seeds derive from it", type=int)
    output_dir: str = option("results/runs", "where runs are written (default {default})")
    checkpoint_dir: str = option("results/checkpoints", "where tuning adapters are cached (default {default})")
    data_root: str | None = option(None, "dataset directory (default $MEDBENCH_DATA/<task>)")
    image_root: str | None = option(
        None, "a second root holding the task's images when they are not under --data-root (iu-xray-vqa: "
        "R2Gen's iu_xray/; omnimedvqa: the OmniMedVQA folder with Images/; mimic-cxr-report: the MIMIC-CXR-JPG "
        "folder with files/); see `medbench data check --help`", metavar="DIR")
    device: str = option("auto", "default {default}", choices=["auto", "cpu", "cuda"])
    device_map: str | None = option(None, "shard a model too large for one GPU (accelerate)", choices=["auto"])
    max_new_tokens: int | None = option(None, "default 16 for VQA, 80 for reports", type=int)
    attention: bool = option(True, "skip attention capture (no coverage/intensity)", commands=("run",),
                             flag_name="--no-attention", action="store_const", const=False)
    allow_failures: bool = option(False, "exit 0 even if some samples failed", commands=("run",),
                                  action="store_const", const=True)
    bertscore_model: str | None = option(None, "local roberta-large directory for BERTScore (or minilm-l6-local, "
                                         "tests only, not comparable)", group="report", metavar="DIR")
    clinical_python: str | None = option(None, "interpreter of the clinical-metrics environment (see medbench "
                                         "setup-clinical)", group="report", metavar="PATH")
    progress: bool = option(True, flag=False)  # -q turns it off
    shard: str | None = option(None, "decode shard I of N (e.g. a SLURM array task); shard 0 waits for the "
                               "others, merges and scores. torchrun/accelerate set this from RANK/WORLD_SIZE",
                               metavar="I/N")
    split: str | None = option(None, "evaluate this split instead of the task's test split, e.g. val to choose "
                               "hyperparameters (the run directory gets @NAME; tables leave such runs out)",
                               metavar="NAME")


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


def model_dir_name(model: str) -> str:
    """The model's name in run and checkpoint paths: a local checkpoint directory by its folder name."""
    return Path(model).name if Path(model).is_dir() else model


def run_dir_for(cfg: RunConfig, res: Resolved) -> Path:
    model_name = model_dir_name(cfg.model)
    suffix = ""
    decoding_args = _changed_params(res.decoding, res.decoding_args) if res.decoding_args else {}
    tuning_args = _changed_params(res.tuning, res.tuning_args) if res.tuning_args else {}
    if decoding_args or tuning_args:
        suffix = "-" + sha256_obj({"d": decoding_args, "t": tuning_args})[:8]
    split = f"@{cfg.split}" if cfg.split else ""
    return Path(cfg.output_dir) / model_name / cfg.task / f"{res.tuning}+{res.decoding}{suffix}{split}"


def open_run_task(cfg: RunConfig) -> Any:
    """The run's task from ``data_root`` (and ``image_root``, refused by tasks that do not take one)."""
    if cfg.image_root is None:
        return TASKS.get(cfg.task)(data_root=cfg.data_root)
    return make_task(cfg.task, cfg.data_root, image_root=cfg.image_root)


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
