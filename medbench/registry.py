"""Typed lazy registries for tasks, methods and backbones.

Entries are ``"module:attr"`` strings imported on first lookup, so listing names never imports
torch. Unknown names raise :class:`UnknownNameError` with did-you-mean suggestions.

Third-party packages add entries through the ``medbench.tasks``, ``medbench.methods`` and
``medbench.models`` entry-point groups; :func:`load_plugins` (called when the CLI starts) registers
them. A plugin entry's metadata (``kind``, ``embedded``) is read from its class the first time it
is asked for, so a plugin declares each fact once, on the class.

Example::

    >>> from medbench.registry import TASKS
    >>> "phantom-vqa" in TASKS.names()
    True
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from medbench.task import Task

T = TypeVar("T")
log = logging.getLogger("medbench")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the nearest matches and every name."""

    def __init__(self, kind: str, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.message = f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(known))}."
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class PluginError(TypeError):
    """A plugin entry point that does not load or does not fit its group (named in the message)."""


@dataclass
class Entry:
    """One registered name. ``plugin`` is the distribution that provides it (``None``: built in)."""

    name: str
    target: str
    info: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None


class Registry(Generic[T]):
    """A name → lazily imported class map with base-class checks and alias collision errors.

    ``metadata`` reads an entry's ``info`` (``kind``, ``embedded`` …) from its class; built-in
    entries state it when added (so listing them imports nothing), plugin entries get it from
    their class on first use.
    """

    def __init__(self, kind: str, base: Callable[[], type] | None = None,
                 metadata: Callable[[type], dict[str, Any]] | None = None):
        self.kind = kind
        self._base = base
        self._metadata = metadata
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, Any] = {}
        self._pending: set[str] = set()  # plugin entries whose info is not read yet
        self._frozen = False

    def add(self, name: str, target: str, *, plugin: str | None = None, **info: Any) -> None:
        if self._frozen:
            raise RuntimeError(f"the {self.kind} registry is frozen")
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = Entry(name, target, info, plugin)
        if plugin is not None and not info:
            self._pending.add(name)

    def freeze(self) -> None:
        self._frozen = True

    def names(self) -> list[str]:
        return sorted(self._entries)

    def builtin_names(self) -> list[str]:
        """Names medbench itself registers (no plugins), sorted; imports nothing."""
        return sorted(n for n, e in self._entries.items() if e.plugin is None)

    def in_order(self) -> list[str]:
        """Names in registration order (built-ins as listed below, then plugins)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _raw(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, list(self._entries))
        return self._entries[name]

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; a plugin's ``info`` is read from its class here, once."""
        entry = self._raw(name)
        if name in self._pending:
            cls = self.get(name)
            entry.info = {**(self._metadata(cls) if self._metadata else {}), "plugin": entry.plugin}
            self._pending.discard(name)
        return entry

    def get(self, name: str) -> Any:
        entry = self._raw(name)
        if name not in self._loaded:
            module_name, _, attr = entry.target.partition(":")
            origin = f" (plugin from {entry.plugin})" if entry.plugin else ""
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                if entry.plugin is None:
                    raise
                raise PluginError(f"{self.kind} {name!r}{origin}: cannot load {entry.target}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            if self._base is not None:
                base = self._base()
                if not (isinstance(obj, type) and issubclass(obj, base)):
                    raise PluginError(f"{self.kind} {name!r} ({entry.target}){origin} is not a {base.__name__}")
            own = getattr(obj, "name", name) if entry.plugin and self.kind in ("task", "method") else name
            if own != name:
                raise PluginError(f"{self.kind} {name!r} ({entry.target}){origin}: the class is named {own!r}; "
                                  "the entry-point name and the class's name must be the same")
            self._loaded[name] = obj
        return self._loaded[name]

    def describe(self) -> list[dict[str, Any]]:
        """``{"name": ..., **info}`` per entry; a plugin that fails to load is left out with a warning."""
        rows = []
        for name in self.names():
            try:
                entry = self.entry(name)
            except PluginError as exc:
                log.warning("%s", exc)
                continue
            rows.append({"name": entry.name, **entry.info})
        return rows


def open_task(name: str, data_root: str | os.PathLike | None = None, version: str | None = None, *,
              image_root: str | os.PathLike | None = None) -> Task:
    """Task ``name`` at ``version`` (a result file's ``task_version``; None: the current one).

    A task whose generator keeps older versions (``versions`` class attribute) is built at the
    requested one; any other version mismatch is a clear error rather than silently scoring a run
    against different data. ``image_root`` (a run's recorded ``--image-root``) is passed to tasks
    whose images live in another folder; a task that reads its images from its data root refuses it.
    """
    import inspect

    from medbench.task import DataRootError

    cls = TASKS.get(name)
    kwargs: dict[str, Any] = {}
    if image_root is not None:
        if "image_root" not in inspect.signature(cls.__init__).parameters:
            raise DataRootError(f"{name} reads its images from its data root; it cannot take the image root "
                                f"{image_root}")
        kwargs["image_root"] = image_root
    if version is None or str(version) == str(cls.version):
        return cls(data_root=data_root, **kwargs)
    available = tuple(getattr(cls, "versions", (cls.version,)))
    if str(version) not in available:
        raise ValueError(f"{name} version {version} is not available in this medbench "
                         f"(available: {', '.join(available)})")
    return cls(data_root=data_root, version=str(version), **kwargs)


def _task_base() -> type:
    from medbench.task import Task

    return Task


def _method_base() -> type:
    from medbench.method import Method

    return Method


def _backbone_base() -> type:
    from medbench.backbones.base import Backbone

    return Backbone


def _task_info(cls: type) -> dict[str, Any]:
    info = {"kind": cls.kind, "embedded": bool(getattr(cls, "embedded", False))}
    if getattr(cls, "label", None):
        info["label"] = cls.label
    return info


def _method_info(cls: type) -> dict[str, Any]:
    info = {"kind": cls.kind, "label": getattr(cls, "label", None) or cls.name}
    if cls.kind == "tuning":
        info["block_label"] = getattr(cls, "block_label", None) or info["label"]
        if getattr(cls, "row_label", None):
            info["row_label"] = cls.row_label
    if getattr(cls, "commands", None):
        info["commands"] = dict(cls.commands)
    return info


def _backbone_info(cls: type) -> dict[str, Any]:
    embedded = bool(getattr(cls, "embedded", False))
    return {"kind": getattr(cls, "kind", "embedded" if embedded else "real"), "embedded": embedded}


TASKS: Registry = Registry("task", _task_base, _task_info)
METHODS: Registry = Registry("method", _method_base, _method_info)
BACKBONES: Registry = Registry("model", _backbone_base, _backbone_info)

# ---- tasks -------------------------------------------------------------------------------------
TASKS.add("phantom-vqa", "medbench.tasks.phantom:PhantomVQA", kind="vqa", embedded=True)
TASKS.add("phantom-report", "medbench.tasks.phantom:PhantomReport", kind="report", embedded=True)
# kind/embedded/label repeat the classes' attributes (listing and tables import no task module;
# tests/cli/test_registry_cli.py checks that they agree); paper datasets in the paper's column order.
TASKS.add("slake", "medbench.tasks.slake:SLAKE", kind="vqa", embedded=False, label="SLAKE")
TASKS.add("vqa-rad", "medbench.tasks.vqa_rad:VQARAD", kind="vqa", embedded=False, label="VQA-RAD")
TASKS.add("pathvqa", "medbench.tasks.pathvqa:PathVQA", kind="vqa", embedded=False, label="PathVQA")
TASKS.add("iu-xray-vqa", "medbench.tasks.iu_xray:IUXrayVQA", kind="vqa", embedded=False, label="IU-Xray")
TASKS.add("omnimedvqa", "medbench.tasks.omnimedvqa:OmniMedVQA", kind="vqa", embedded=False, label="OmniVQA")
TASKS.add("iu-xray-report", "medbench.tasks.iu_xray:IUXrayReport", kind="report", embedded=False, label="IU-Xray")
TASKS.add("mimic-cxr-report", "medbench.tasks.mimic_cxr:MIMICCXRReport", kind="report", embedded=False,
          label="MIMIC-CXR")

# ---- methods -----------------------------------------------------------------------------------
# kind/label (and a tuning's block_label/row_label) repeat the classes' attributes so that listing
# and tables import no method module; tests/cli/test_registry_cli.py checks that they agree.
# Decoding methods are listed in the paper's row order (tables sort rows by it).
# fmt: off
METHODS.add("greedy", "medbench.methods.greedy:Greedy", kind="decoding", label="Greedy")
METHODS.add("beam", "medbench.methods.beam:Beam", kind="decoding", label="Beam")
METHODS.add("nucleus", "medbench.methods.nucleus:Nucleus", kind="decoding", label="Nucleus")
METHODS.add("vcd", "medbench.methods.vcd:VCD", kind="decoding", label="VCD")
METHODS.add("dola", "medbench.methods.dola:DoLa", kind="decoding", label="DoLa")
METHODS.add("opera", "medbench.methods.opera:OPERA", kind="decoding", label="OPERA")
METHODS.add("avisc", "medbench.methods.avisc:AVISC", kind="decoding", label="AVISC")
METHODS.add("m3id", "medbench.methods.m3id:M3ID", kind="decoding", label="M3ID")
METHODS.add("damro", "medbench.methods.damro:DAMRO", kind="decoding", label="DAMRO")
METHODS.add("pai", "medbench.methods.pai:PAI", kind="decoding", label="PAI")
METHODS.add("controlmllm", "medbench.methods.controlmllm:ControlMLLM", kind="decoding", label="ControlMLLM")
METHODS.add("lora", "medbench.methods.lora:LoRA", kind="tuning", label="LoRA", block_label="LoRA")
METHODS.add("a3tune", "medbench.methods.a3tune:A3Tune", kind="tuning", label="A3TUNE", block_label="LoRA",
            row_label="A3TUNE", commands={"weak-labels": "medbench.methods.a3tune.cli"})
# fmt: on

# ---- backbones ---------------------------------------------------------------------------------
BACKBONES.add("tiny-med-llava", "medbench.backbones.tiny:TinyMedLlava", kind="embedded", embedded=True)
BACKBONES.add("llava-med-v1", "medbench.backbones.llava:LlavaMedV1", kind="real", embedded=False)
BACKBONES.add("llava-med-v1.5", "medbench.backbones.llava:LlavaMedV15", kind="real", embedded=False)
BACKBONES.add("huatuogpt-vision-7b", "medbench.backbones.llava:HuatuoGPTVision", kind="real", embedded=False)


#: Entry-point group → the registry its entries join.
PLUGIN_GROUPS = {"medbench.tasks": TASKS, "medbench.methods": METHODS, "medbench.models": BACKBONES}


_SCANNED: dict[str, tuple[str, ...]] = {}  # the sys.path the last scan saw


def load_plugins(force: bool = False) -> list[str]:
    """Register third-party entries from the ``medbench.tasks``/``methods``/``models`` entry points.

    Called when the CLI starts; code that uses the registries without the CLI calls it itself.
    Nothing is imported here: a plugin's module loads when its name is first used, and its
    ``kind`` (``embedded``) comes from its class. A plugin may not replace a built-in or another
    plugin's name (it is skipped with a warning). Calling this again registers nothing twice, and
    with an unchanged ``sys.path`` does not scan again unless ``force``. Returns the ``group:name``
    of every entry added by this call.
    """
    import sys
    from importlib.metadata import entry_points

    if not force and _SCANNED.get("path") == tuple(sys.path):
        return []
    _SCANNED["path"] = tuple(sys.path)
    added = []
    for group, registry in PLUGIN_GROUPS.items():
        for ep in entry_points(group=group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an unnamed distribution"
            module, colon, attr = (part.strip() for part in ep.value.partition(":"))
            if not colon or not module or not attr:
                log.warning("plugin %s %r from %s ignored: entry point %r is not 'module:Class'",
                            registry.kind, ep.name, dist, ep.value)
                continue
            target = f"{module}:{attr}"
            if ep.name in registry:
                if registry._raw(ep.name).target != target:
                    log.warning("plugin %s %r (%s, from %s) ignored: the name is already registered to %s",
                                registry.kind, ep.name, target, dist, registry._raw(ep.name).target)
                continue
            registry.add(ep.name, target, plugin=dist)
            added.append(f"{group}:{ep.name}")
    return added
