"""Method base classes and typed ``--method-args`` parsing.

A method is a class with a frozen ``Params`` dataclass whose defaults are the paper's values.
Decoding methods turn an encoded batch into token ids; tuning methods train an adapter and
wrap a backbone with it. No code branches on a method's name.

Validation is one mechanism for every method: values (command-line strings, or typed YAML/code
values read as their command-line text) are coerced to the field types; every numeric field is
checked against its :class:`Range` in the class's ``RANGES`` (NaN never, ±inf only where declared);
``Params.validate()`` checks what involves several fields; and :meth:`Method.check_backbone` checks
layer indices against the loaded backbone's depth before anything is decoded.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar


class MethodArgsError(ValueError):
    """A ``--method-args`` entry that does not fit the method's parameters."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of one numeric method argument.

    ``lo``/``hi`` bound the value (closed unless ``lo_open``/``hi_open``; ``None`` is unbounded on
    that side). NaN is never allowed and ±inf only with ``allow_inf``. ``depth_hi`` makes the
    argument a layer index of the language model: its upper bound is the backbone's number of
    layers plus ``depth_hi`` (``0``: an exclusive end such as ``end_layer``; ``-1``: a layer
    index), checked by :meth:`Method.check_backbone` once the backbone is loaded.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    allow_inf: bool = False
    depth_hi: int | None = None

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '≥'} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '≤'} {self.hi:g}"
        return "a finite number"

    def check(self, name: str, value: float) -> None:
        if math.isinf(value) and self.allow_inf:
            return
        finite = "" if self.allow_inf else "finite and "
        if not math.isfinite(value):
            raise MethodArgsError(f"{name} must be {finite}{self.describe()}, got {value}")
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if below or above:
            raise MethodArgsError(f"{name} must be {self.describe()}, got {value:g}")


#: Lowest sampling temperature accepted: logits / T must stay finite in float32 and bf16.
MIN_TEMPERATURE = 1e-2


def param_ranges(params_cls: type) -> dict[str, Range]:
    """``RANGES`` of ``params_cls`` merged along its bases (a subclass entry wins)."""
    merged: dict[str, Range] = {}
    for klass in reversed(params_cls.__mro__):
        merged.update(klass.__dict__.get("RANGES", {}))
    return merged


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters."""


def _numeric(annotation: Any) -> type | None:
    """``int`` or ``float`` for a numeric field annotation (optionals included), else ``None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else None
    return annotation if annotation in (int, float) else None


def numeric_fields(params_cls: type) -> dict[str, type]:
    """Field name → ``int`` or ``float`` for every numeric field of ``params_cls``."""
    hints = typing.get_type_hints(params_cls)
    out = {}
    for f in dataclasses.fields(params_cls):
        kind = _numeric(hints[f.name])
        if kind is not None:
            out[f.name] = kind
    return out


def _as_text(name: str, raw: Any) -> str:
    """A typed value (YAML, code) in the form it would have on the command line."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return repr(raw)
    if isinstance(raw, (list, tuple)):
        return ",".join(_as_text(name, v) for v in raw)
    raise MethodArgsError(f"{name}={raw!r}: expected a number, string, boolean or a list of them")


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """``raw`` (a string, or a typed value read as its command-line text) as ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        if raw is None or (optional and isinstance(raw, str) and raw.lower() in ("none", "null")):
            if optional:
                return None
            raise MethodArgsError(f"{name}: a value is required")
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    if raw is None:
        raise MethodArgsError(f"{name}: a value is required")
    text = _as_text(name, raw)
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise MethodArgsError(f"{name}={raw!r}: expected a boolean (true/false)")
    if origin is typing.Literal:
        if text not in typing.get_args(annotation):
            raise MethodArgsError(f"{name}={raw!r}: expected one of {', '.join(map(str, typing.get_args(annotation)))}")
        return text
    if origin in (tuple, list):
        inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
        items = [p for p in text.replace(";", ",").split(",") if p != ""]
        return tuple(_coerce(name, p, inner) for p in items)
    try:
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
    except ValueError:
        raise MethodArgsError(f"{name}={raw!r}: expected {annotation.__name__}") from None
    if annotation is str and not isinstance(raw, str):
        raise MethodArgsError(f"{name}={raw!r}: expected a string (quote it in YAML)")
    return text


def check_ranges(params: Any) -> None:
    """Every numeric field of ``params`` against its :class:`Range` (NaN never, ±inf only if allowed)."""
    ranges = param_ranges(type(params))
    for name, kind in numeric_fields(type(params)).items():
        value = getattr(params, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
            raise MethodArgsError(f"{name}={value!r}: expected {kind.__name__}")
        ranges.get(name, Range()).check(name, value)


def check_depth(params: Any, n_layers: int) -> None:
    """Layer-index arguments (``Range.depth_hi``) within a language model of ``n_layers`` layers."""
    for name, rng in param_ranges(type(params)).items():
        value = getattr(params, name, None)
        if rng.depth_hi is None or value is None:
            continue
        hi = n_layers + rng.depth_hi
        if value > hi:
            raise MethodArgsError(f"{name} must be {Range(lo=rng.lo, hi=hi).describe()} on this backbone "
                                  f"({n_layers} layers), got {value}")
    validate_depth = getattr(params, "validate_depth", None)
    if callable(validate_depth):
        validate_depth(n_layers)


def parse_params(params_cls: type, overrides: dict[str, Any]) -> Any:
    """Build ``params_cls`` from defaults plus string or typed overrides, with clear errors.

    Typed values (from YAML or code) go through the same coercion as their command-line text,
    so ``selection: 7`` or ``top_p: true`` are refused as ``selection=7`` would be. Every numeric
    field is then checked against the class's ``RANGES`` (see :class:`Range`), and the class's own
    ``validate()`` checks what involves several fields.
    """
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
    check_ranges(instance)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate()
    return instance


def parse_method_args(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` → ``{"a": "1", "b": "x,y"}``; malformed entries and repeated keys raise."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in [item] if "=" in item and item.count("=") == 1 else item.split(" "):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise MethodArgsError(f"method argument {part!r} is not key=value")
            key = key.strip()
            if key in out:
                raise MethodArgsError(f"method argument {key!r} given twice ({key}={out[key]} and {key}={value.strip()})")
            out[key] = value.strip()
    return out


def canonical_args(aliases: dict[str, str], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with aliases replaced by the parameter names; one parameter named twice raises."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in overrides.items():
        name = aliases.get(key, key)
        if name in out:
            raise MethodArgsError(f"method argument {name!r} given twice (as {given[name]!r} and {key!r})")
        out[name], given[name] = value, key
    return out


class Method(ABC):
    """Common base: a name, a kind and typed hyperparameters."""

    name: ClassVar[str]
    kind: ClassVar[str]
    #: How tables and listings name the method (``"VCD"``); ``None``: its ``name``.
    label: ClassVar[str | None] = None
    Params: ClassVar[type] = NoParams
    #: Other accepted names of parameters (``{"lambda": "lam"}``); a name and its alias together are an error.
    ALIASES: ClassVar[dict[str, str]] = {}
    #: CLI subcommands the method provides: ``{"weak-labels": "<module with add_parser(sub)>"}``
    #: (built-ins state it in the registry too, so the CLI finds them without importing the method).
    commands: ClassVar[dict[str, str]] = {}

    def __init__(self, **overrides: Any):
        self.params = parse_params(self.Params, canonical_args(self.ALIASES, overrides))

    def resolved_args(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def check_backbone(self, backbone: Any) -> None:
        """Refuse layer-index arguments beyond ``backbone``'s language model (before any decoding)."""
        check_depth(self.params, int(backbone.text_config.num_hidden_layers))


class DecodingMethod(Method):
    """Turns a batch of prompts into answer token ids."""

    kind = "decoding"
    #: Sampling methods draw from per-sample generators.
    samples: ClassVar[bool] = False

    @classmethod
    def supports(cls, task: Any) -> bool:
        """Whether the method is defined on ``task`` (a Task class or instance); default: every task.

        Suites that sweep methods over tasks (``medbench baselines``) skip the pairs it refuses.
        """
        return True

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
    #: The paper-table model block of its runs: ``"<Backbone> + <block_label>"``; ``None``: its label.
    block_label: ClassVar[str | None] = None
    #: Set when the tuning names its own rows (``"A3TUNE"``, ``"A3TUNE → VCD"``; its base row is the
    #: default decoding, which a greedy run fills); ``None``: rows are named by the decoding.
    row_label: ClassVar[str | None] = None
    #: The decodings the CI baseline suite (``medbench baselines``) pairs with this tuning;
    #: ``None``: every built-in decoding method.
    baseline_decodings: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def bench_trainers(cls) -> dict[str, Any]:
        """``medbench bench train`` configurations: name → ``factory(backbone, task, samples)`` returning a
        :class:`medbench.bench_train.Trainer` (its model, per-batch loss and teardown). None by default."""
        return {}

    @abstractmethod
    def fingerprint(self, backbone: Any, task: Any, seed: int) -> str:
        """Hash of everything the trained weights depend on."""

    @abstractmethod
    def train(self, backbone: Any, task: Any, out_dir: Path, seed: int, device: str) -> Path:
        """Train and save the adapter into ``out_dir``; return it."""

    @abstractmethod
    def apply(self, backbone: Any, checkpoint: Path) -> Any:
        """Return the backbone with the trained adapter attached."""
