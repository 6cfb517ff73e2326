"""Provenance of a result: the versions of the packages that fix the numbers and the git commit.

``results.json`` (``versions``, ``git``), ``bench train``'s report and A³TUNE's ``training.json``
all take them from here.
"""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

RESULT_PACKAGES = ("medbench", "torch", "transformers", "peft", "tokenizers", "pycocoevalcap")


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """``{package: version}``, ``"absent"`` for a package that is not installed."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def versions() -> dict[str, str]:
    """Python and the packages a result's numbers depend on (``results.json`` ``versions``)."""
    return {"python": platform.python_version(), **package_versions(RESULT_PACKAGES)}


def git_info() -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (``None`` outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                                    text=True, timeout=5).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except Exception:
        return {"commit": None, "dirty": None}
