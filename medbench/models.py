"""Resolve ``--model NAME_OR_PATH`` to a loaded backbone (never a hub download).

A registered name loads its adapter from the local path configured for it (see
:mod:`medbench.backbones.local_models`); a local directory picks its adapter from
``medbench_conversion.json`` or ``config.json`` (see :func:`medbench.backbones.llava.adapter_for`),
else it is a tiny-med-llava-style checkpoint; any other name configured in the local registry is
loaded like a directory. ``device_map="auto"`` (``--device-map auto``) shards a model that does not fit one GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medbench.registry import BACKBONES


def _load(cls: Any, path: Path | None, device: str, device_map: str | None) -> Any:
    from medbench.backbones.llava import LlavaBackbone

    if isinstance(cls, type) and issubclass(cls, LlavaBackbone):
        return cls.load(path, device=device, device_map=device_map)
    return cls.load(path, device=device)


def load_backbone(name_or_path: str, device: str = "cpu", device_map: str | None = None) -> Any:
    """A registered backbone name, a local checkpoint directory, or a name mapped to one locally."""
    from medbench import attention
    from medbench.backbones import local_models

    if name_or_path in BACKBONES:
        backbone = _load(BACKBONES.get(name_or_path), None, device, device_map)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            if local_models.configured(name_or_path) is None:
                BACKBONES.entry(name_or_path)  # raises the did-you-mean error
            path = local_models.resolve(name_or_path)
        backbone = _load(_adapter_for(path), path, device, device_map)
    attention.install(backbone.model)
    return backbone


def _adapter_for(path: Path) -> Any:
    from medbench.backbones.llava import adapter_for
    from medbench.backbones.tiny import TinyMedLlava

    return adapter_for(path) or TinyMedLlava


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA device is available")
    return device
