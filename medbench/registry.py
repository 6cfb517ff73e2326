"""Typed lazy registries for tasks, methods and backbones.

Entries are ``"module:attr"`` strings imported on first lookup, so listing names never imports
torch. Unknown names raise :class:`UnknownNameError` with did-you-mean suggestions.

Example::

    >>> from medbench.registry import TASKS
    >>> "phantom-vqa" in TASKS.names()
    True
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the nearest matches and every name."""

    def __init__(self, kind: str, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.message = f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(known))}."
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class Entry:
    name: str
    target: str
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A name → lazily imported class map with base-class checks and alias collision errors."""

    def __init__(self, kind: str, base: Callable[[], type] | None = None):
        self.kind = kind
        self._base = base
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, Any] = {}
        self._frozen = False

    def add(self, name: str, target: str, **info: Any) -> None:
        if self._frozen:
            raise RuntimeError(f"the {self.kind} registry is frozen")
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = Entry(name, target, info)

    def freeze(self) -> None:
        self._frozen = True

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, list(self._entries))
        return self._entries[name]

    def get(self, name: str) -> Any:
        entry = self.entry(name)
        if name not in self._loaded:
            module_name, _, attr = entry.target.partition(":")
            obj = getattr(importlib.import_module(module_name), attr)
            if self._base is not None:
                base = self._base()
                if not (isinstance(obj, type) and issubclass(obj, base)):
                    raise TypeError(f"{self.kind} {name!r} ({entry.target}) is not a {base.__name__}")
            self._loaded[name] = obj
        return self._loaded[name]

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": e.name, **e.info} for e in (self._entries[n] for n in self.names())]


def _task_base() -> type:
    from medbench.task import Task

    return Task


def _method_base() -> type:
    from medbench.method import Method

    return Method


def _backbone_base() -> type:
    from medbench.backbones.base import Backbone

    return Backbone


TASKS: Registry = Registry("task", _task_base)
METHODS: Registry = Registry("method", _method_base)
BACKBONES: Registry = Registry("model", _backbone_base)

# ---- tasks -------------------------------------------------------------------------------------
TASKS.add("phantom-vqa", "medbench.tasks.phantom:PhantomVQA", kind="vqa", embedded=True)
TASKS.add("phantom-report", "medbench.tasks.phantom:PhantomReport", kind="report", embedded=True)
TASKS.add("slake", "medbench.tasks.slake:SLAKE", kind="vqa", embedded=False)
TASKS.add("vqa-rad", "medbench.tasks.vqa_rad:VQARAD", kind="vqa", embedded=False)
TASKS.add("pathvqa", "medbench.tasks.pathvqa:PathVQA", kind="vqa", embedded=False)
TASKS.add("iu-xray-vqa", "medbench.tasks.iu_xray:IUXrayVQA", kind="vqa", embedded=False)
TASKS.add("omnimedvqa", "medbench.tasks.omnimedvqa:OmniMedVQA", kind="vqa", embedded=False)
TASKS.add("iu-xray-report", "medbench.tasks.iu_xray:IUXrayReport", kind="report", embedded=False)
TASKS.add("mimic-cxr-report", "medbench.tasks.mimic_cxr:MIMICCXRReport", kind="report", embedded=False)

# ---- methods -----------------------------------------------------------------------------------
METHODS.add("greedy", "medbench.methods.greedy:Greedy", kind="decoding")
METHODS.add("beam", "medbench.methods.beam:Beam", kind="decoding")
METHODS.add("nucleus", "medbench.methods.nucleus:Nucleus", kind="decoding")
METHODS.add("vcd", "medbench.methods.vcd:VCD", kind="decoding")
METHODS.add("dola", "medbench.methods.dola:DoLa", kind="decoding")
METHODS.add("opera", "medbench.methods.opera:OPERA", kind="decoding")
METHODS.add("avisc", "medbench.methods.avisc:AVISC", kind="decoding")
METHODS.add("m3id", "medbench.methods.m3id:M3ID", kind="decoding")
METHODS.add("damro", "medbench.methods.damro:DAMRO", kind="decoding")
METHODS.add("pai", "medbench.methods.pai:PAI", kind="decoding")
METHODS.add("controlmllm", "medbench.methods.controlmllm:ControlMLLM", kind="decoding")
METHODS.add("lora", "medbench.methods.lora:LoRA", kind="tuning")
METHODS.add("a3tune", "medbench.methods.a3tune:A3Tune", kind="tuning")

# ---- backbones ---------------------------------------------------------------------------------
BACKBONES.add("tiny-med-llava", "medbench.backbones.tiny:TinyMedLlava", kind="embedded", embedded=True)
BACKBONES.add("llava-med-v1", "medbench.backbones.llava:LlavaMedV1", kind="real", embedded=False)
BACKBONES.add("llava-med-v1.5", "medbench.backbones.llava:LlavaMedV15", kind="real", embedded=False)
BACKBONES.add("huatuogpt-vision-7b", "medbench.backbones.llava:HuatuoGPTVision", kind="real", embedded=False)


def load_plugins() -> None:
    """Register third-party entries from the ``medbench.tasks``/``medbench.methods`` entry points."""
    from importlib.metadata import entry_points

    for group, registry in (("medbench.tasks", TASKS), ("medbench.methods", METHODS), ("medbench.models", BACKBONES)):
        for ep in entry_points(group=group):
            if ep.name not in registry:
                registry.add(ep.name, ep.value, kind="plugin")
