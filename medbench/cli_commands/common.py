"""Shared flag groups for ``run`` and ``train``, and ``--config`` merging (flags win)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from medbench.errors import ConfigError
from medbench.method import MethodArgsError, parse_method_args
from medbench.run_config import parse_config_dict

RUN_FLAGS = ("method", "task", "model", "tuning", "decoding", "limit", "batch_size", "seed", "output_dir",
             "checkpoint_dir", "data_root", "device", "device_map", "max_new_tokens", "bertscore_model",
             "clinical_python", "shard", "split")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def add_run_flags(p: argparse.ArgumentParser, *, require_method: bool = True) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument("--method", help="decoding (greedy, beam, nucleus, …) or tuning (lora, a3tune) method")
    g.add_argument("--task", help="task name, e.g. phantom-vqa (see `medbench list tasks`)")
    g.add_argument("--model", help="backbone name or local checkpoint directory (default tiny-med-llava)")
    g.add_argument("--tuning", help="tuning to compose with a decoding method: none|lora|a3tune")
    g.add_argument("--decoding", help="decoding method after a tuning method (default greedy)")
    g.add_argument("--method-args", nargs="*", action="extend", metavar="K=V",
                   help="method hyperparameters, e.g. top_p=0.8; repeated flags add up, a name given twice is an "
                   "error; they override --config's method_args; prefix tuning./decoding. when a name fits both")
    g.add_argument("--config", metavar="FILE.yaml", help="YAML file of these options; flags override it")
    h = p.add_argument_group("how to run")
    h.add_argument("--limit", type=int, help="first N ≥ 1 samples only (for quick checks; marked in tables); "
                   "leave it out for every sample")
    h.add_argument("--batch-size", type=int, help="samples per forward pass (default 8)")
    h.add_argument("--seed", type=int, help="global seed (default 0); per-sample seeds derive from it")
    h.add_argument("--output-dir", help="where runs are written (default results/runs)")
    h.add_argument("--checkpoint-dir", help="where tuning adapters are cached (default results/checkpoints)")
    h.add_argument("--data-root", help="dataset directory (default $MEDBENCH_DATA/<task>)")
    h.add_argument("--split", metavar="NAME", help="evaluate this split instead of the task's test split, e.g. "
                   "val to choose hyperparameters (the run directory gets @NAME; tables leave such runs out)")
    h.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    h.add_argument("--device-map", choices=["auto"], help="shard a model too large for one GPU (accelerate)")
    h.add_argument("--shard", metavar="I/N", help="decode shard I of N (e.g. a SLURM array task); shard 0 "
                   "waits for the others, merges and scores. torchrun/accelerate set this from RANK/WORLD_SIZE")
    r = p.add_argument_group("optional report metrics")
    r.add_argument("--bertscore-model", metavar="DIR", help="local roberta-large directory for BERTScore "
                   "(or minilm-l6-local, tests only, not comparable)")
    r.add_argument("--clinical-python", metavar="PATH", help="interpreter of the clinical-metrics environment "
                   "(see medbench setup-clinical)")
    h.add_argument("--max-new-tokens", type=int, help="default 16 for VQA, 80 for reports")


def merged_config(args: argparse.Namespace) -> dict[str, Any]:
    """YAML config values overridden by the flags that were given."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except RecursionError:
            raise ConfigError(f"{path}: YAML nested too deeply") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value")
        data = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        if len(data) != len(loaded):
            raise ConfigError(f"{path}: an option is given twice (spelled with - and with _)")
        if "method_args" in data:
            ma = data["method_args"]
            if isinstance(ma, dict):
                bad = [str(k) for k, v in ma.items() if not _scalar_or_list(v)]
                if bad:
                    raise ConfigError(f"{path}: method_args {', '.join(bad)}: expected a number, string, "
                                      "boolean or a list of them")
                data["method_args"] = {str(k): v for k, v in ma.items()}
            elif isinstance(ma, list):
                try:
                    data["method_args"] = parse_method_args([str(x) for x in ma])
                except MethodArgsError as exc:
                    raise ConfigError(f"{path}: {exc}") from None
            else:
                raise ConfigError(f"{path}: method_args must be a mapping or a list of key=value")
    for key in RUN_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if getattr(args, "method_args", None):
        try:
            flags = parse_method_args(args.method_args)
        except MethodArgsError as exc:
            raise ConfigError(f"--method-args: {exc}") from None
        data["method_args"] = {**without_overridden(data.get("method_args", {}), flags), **flags}
    if getattr(args, "quiet", False):
        data["progress"] = False
    for required in ("method", "task"):
        if not data.get(required):
            raise ConfigError(f"--{required} is required (on the command line or in --config)")
    return data


def without_overridden(from_file: dict[str, Any], flags: dict[str, str]) -> dict[str, Any]:
    """``--config`` method arguments minus those a flag overrides, however either spells the name.

    ``lr`` and ``tuning.lr`` name the same argument; ``decoding.alpha`` and ``tuning.alpha`` do not.
    """
    def spelling(key: str) -> tuple[str | None, str]:
        prefix, dot, rest = key.partition(".")
        return (prefix, rest) if dot else (None, key)

    given = [spelling(k) for k in flags]
    kept = {}
    for key, value in from_file.items():
        prefix, name = spelling(key)
        if not any(name == n and (None in (prefix, p) or prefix == p) for p, n in given):
            kept[key] = value
    return kept


def _scalar_or_list(value: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def build_run_config(args: argparse.Namespace) -> Any:
    data = merged_config(args)
    try:
        return parse_config_dict(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def formatter() -> type:
    return argparse.RawDescriptionHelpFormatter


__all__ = ["add_run_flags", "build_run_config", "RunConfigType"]
RunConfigType = Any
