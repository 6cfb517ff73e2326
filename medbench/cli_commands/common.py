"""Shared flag groups for ``run`` and ``train`` (generated from ``RunConfig``'s fields), and
``--config`` merging (flags win)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from medbench.errors import ConfigError
from medbench.method import MethodArgsError, parse_method_args
from medbench.run_config import RunConfig, parse_config_dict


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


GROUPS = {"what": "what to run", "how": "how to run", "report": "optional report metrics"}


def run_options(command: str) -> list[dataclasses.Field]:
    """The :class:`RunConfig` fields that are flags of ``command`` (``run`` or ``train``), in field order."""
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("flag") and command in f.metadata["commands"]]


# Flags whose given value replaces --config's (``--method-args`` is merged key by key instead).
RUN_FLAGS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("flag") and f.name != "method_args")


def add_run_flags(p: argparse.ArgumentParser, command: str = "run") -> None:
    """``command``'s flags, generated from the :class:`RunConfig` fields (help, group, argparse options)."""
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    for f in run_options(command):
        meta = f.metadata
        default = None if f.default is dataclasses.MISSING else f.default
        flag = meta["flag_name"] or "--" + f.name.replace("_", "-")
        groups[meta["group"]].add_argument(flag, dest=f.name, help=meta["help"].format(default=default),
                                           **meta["argparse"])
    groups["what"].add_argument("--config", metavar="FILE.yaml", help="YAML file of these options; flags override it")


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
