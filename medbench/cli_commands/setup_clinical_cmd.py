"""``medbench setup-clinical --venv DIR``: the separate environment for the clinical report metrics.

CheXbert similarity, RadGraph F1 and RaTEScore need transformers < 5 (and numpy < 2), so they
live in their own virtual environment, pinned by ``constraints-clinical.txt``, and are reached
only through ``DIR/bin/python -m medbench.metrics.clinical``. medbench itself is installed there
with ``--no-deps`` (its clinical module uses only the standard library and those packages).
Needs network access once; scoring later is offline. About 1.9 GB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CLINICAL_PACKAGES = ("f1chexbert==0.0.2", "radgraph==0.1.18", "ratescore==0.6.0", "medspacy==1.3.1")
CONSTRAINTS = "constraints-clinical.txt"

EPILOG = """examples:
  medbench setup-clinical --venv ~/.venvs/medbench-clinical
  medbench setup-clinical --venv ~/.venvs/medbench-clinical --torch-index-url https://download.pytorch.org/whl/cpu
  medbench setup-clinical --venv ~/.venvs/medbench-clinical --dry-run

afterwards: set the config key clinical_python (or MEDBENCH_CLINICAL_PYTHON) to DIR/bin/python and
MEDBENCH_MODELS to the clinical models root (chexbert/, hf/, radgraph/, RaTE-NER-Deberta/, BioLORD-2023-C/)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup-clinical", help="create the separate environment for CheXbert/RadGraph/RaTEScore",
                       description="Create the separate environment for the clinical report metrics "
                       "(CheXbert similarity, RadGraph F1, RaTEScore), pinned by constraints-clinical.txt.",
                       epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", required=True, type=Path, help="directory of the new virtual environment")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that creates the environment (Python 3.11 tested; default: this one)")
    p.add_argument("--torch-index-url", metavar="URL",
                   help="package index for torch, e.g. https://download.pytorch.org/whl/cpu for the CPU build")
    p.add_argument("--constraints", type=Path, help=f"pins file (default: {CONSTRAINTS} of this medbench checkout)")
    p.add_argument("--source", help="medbench source directory or wheel to install with --no-deps "
                   "(default: this medbench checkout)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.set_defaults(func=main)


def _project_root() -> Path | None:
    import medbench

    root = Path(medbench.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def venv_python(venv: Path) -> Path:
    """The interpreter inside a virtual environment directory."""
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def plan(venv: Path, python: str, constraints: Path, source: str, torch_index_url: str | None) -> list[list[str]]:
    """The commands that build the clinical environment, in order."""
    py = str(venv_python(venv))
    pip = [py, "-m", "pip", "install", "-c", str(constraints)]
    torch = [*pip, "torch"] + (["--index-url", torch_index_url] if torch_index_url else [])
    return [
        [python, "-m", "venv", str(venv)],
        [py, "-m", "pip", "install", "--upgrade", "pip"],
        torch,
        [*pip, *CLINICAL_PACKAGES],
        [py, "-m", "pip", "install", "--no-deps", source],
        [py, "-m", "medbench.metrics.clinical", "--check", "--pip-check"],
    ]


def main(args: argparse.Namespace) -> int:
    root = _project_root()
    constraints = args.constraints or (root / CONSTRAINTS if root else None)
    if constraints is None or not Path(constraints).is_file():
        raise FileNotFoundError(f"{CONSTRAINTS} not found: pass --constraints PATH (it ships with the medbench source)")
    source = args.source or (str(root) if root else None)
    if source is None:
        raise FileNotFoundError("cannot locate the medbench source: pass --source DIR_OR_WHEEL")
    venv = args.venv.expanduser().resolve()
    for cmd in plan(venv, args.python, Path(constraints).resolve(), source, args.torch_index_url):
        print("+ " + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"medbench: error: setup-clinical step failed: {exc}", file=sys.stderr)
            return 1
    print(f"\nclinical environment ready: set clinical_python (or MEDBENCH_CLINICAL_PYTHON) to {venv_python(venv)}")
    return 0
