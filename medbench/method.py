"""Method base classes and typed ``--method-args`` parsing.

A method is a class with a frozen ``Params`` dataclass whose defaults are the paper's values.
Decoding methods turn an encoded batch into token ids; tuning methods train an adapter and
wrap a backbone with it. No code branches on a method's name.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar


class MethodArgsError(ValueError):
    """A ``--method-args`` entry that does not fit the method's parameters."""


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters."""


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    if annotation is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise MethodArgsError(f"{name}={raw!r}: expected a boolean (true/false)")
    if origin is typing.Literal:
        if raw not in typing.get_args(annotation):
            raise MethodArgsError(f"{name}={raw!r}: expected one of {', '.join(map(str, typing.get_args(annotation)))}")
        return raw
    if origin in (tuple, list):
        inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
        items = [p for p in raw.replace(";", ",").split(",") if p != ""]
        return tuple(_coerce(name, p, inner) for p in items)
    try:
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
    except ValueError:
        raise MethodArgsError(f"{name}={raw!r}: expected {annotation.__name__}") from None
    return raw


def parse_params(params_cls: type, overrides: dict[str, Any]) -> Any:
    """Build ``params_cls`` from defaults plus string or typed overrides, with clear errors."""
    hints = typing.get_type_hints(params_cls)
    fields = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        import difflib

        hints_txt = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hints_txt.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise MethodArgsError(
            f"unknown method argument {', '.join(hints_txt)}; valid: {', '.join(sorted(fields)) or 'none'}"
        )
    values = {k: _coerce(k, v, hints[k]) for k, v in overrides.items()}
    instance = params_cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate()
    return instance


def parse_method_args(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` → ``{"a": "1", "b": "x,y"}``; malformed entries raise."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in [item] if "=" in item and item.count("=") == 1 else item.split(" "):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise MethodArgsError(f"method argument {part!r} is not key=value")
            out[key.strip()] = value.strip()
    return out


class Method(ABC):
    """Common base: a name, a kind and typed hyperparameters."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, **overrides: Any):
        self.params = parse_params(self.Params, overrides)

    def resolved_args(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)


class DecodingMethod(Method):
    """Turns a batch of prompts into answer token ids."""

    kind = "decoding"
    #: Sampling methods draw from per-sample generators.
    samples: ClassVar[bool] = False

    def check_samples(self, samples: list[Any]) -> None:
        """Refuse a run whose samples lack what the method needs (e.g. an RoI); default: accept."""

    def prepare(self, backbone: Any, samples: list[Any], images: list[Any]) -> None:
        """Per-batch sample context (RoIs, raw questions) before :meth:`generate`; default: none."""

    @abstractmethod
    def generate(self, backbone: Any, batch: Any, seeds: list[int], max_new_tokens: int) -> Any:
        """Return a :class:`medbench.engine.Generation` for the batch."""


class TuningMethod(Method):
    """Trains an adapter on a task's train split, then decodes with a decoding method."""

    kind = "tuning"
    #: Arguments that change how training runs, never what it produces: kept out of fingerprints
    #: and run-directory names.
    OPERATIONAL: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

    @abstractmethod
    def fingerprint(self, backbone: Any, task: Any, seed: int) -> str:
        """Hash of everything the trained weights depend on."""

    @abstractmethod
    def train(self, backbone: Any, task: Any, out_dir: Path, seed: int, device: str) -> Path:
        """Train and save the adapter into ``out_dir``; return it."""

    @abstractmethod
    def apply(self, backbone: Any, checkpoint: Path) -> Any:
        """Return the backbone with the trained adapter attached."""
