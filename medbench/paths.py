"""Where medbench keeps generated data, caches and shipped assets."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def cache_dir(*parts: str) -> Path:
    """Root for generated data and caches: ``$MEDBENCH_CACHE`` or ``~/.cache/medbench``."""
    root = os.environ.get("MEDBENCH_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "medbench"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
