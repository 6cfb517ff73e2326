"""Resolve ``--model NAME_OR_PATH`` to a loaded backbone (never a hub download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medbench.registry import BACKBONES


def load_backbone(name_or_path: str, device: str = "cpu") -> Any:
    """A registered backbone name, or a local directory holding a tiny-med-llava-style checkpoint."""
    from medbench import attention

    if name_or_path in BACKBONES:
        backbone = BACKBONES.get(name_or_path).load(device=device)
    elif Path(name_or_path).is_dir():
        from medbench.backbones.tiny import TinyMedLlava

        backbone = TinyMedLlava.load(name_or_path, device=device)
    else:
        BACKBONES.entry(name_or_path)  # raises the did-you-mean error
        raise AssertionError("unreachable")
    attention.install(backbone.model)
    return backbone


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA device is available")
    return device
