"""The core reaches methods and tasks only through the registry, and its modules form no import cycle.

Imports are read from the source with ``ast`` (top-level and inside functions), nothing is imported.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted([*(ROOT / "medbench").glob("*.py"), *(ROOT / "medbench" / "cli_commands").glob("*.py")])
LEAVES = ("medbench.methods", "medbench.tasks")

# The embedded backbone is pretrained on (and its vision targets drawn from) the phantom generator
# itself, not on a task's samples; these modules use the generator until phantom becomes a package
# with a public pretraining API (the phantom v3 issue).
PHANTOM_GENERATOR_USERS = {"pretrain.py", "pretrain_language.py", "pretrain_vision.py", "vision_targets.py"}


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_core_imports_no_method_or_task_module():
    offenders = {}
    for path in CORE:
        leaves = sorted(m for m in imported_modules(path) if m.startswith(tuple(f"{p}." for p in LEAVES)) or m in LEAVES)
        if path.name in PHANTOM_GENERATOR_USERS:
            leaves = [m for m in leaves if not m.startswith("medbench.tasks.phantom")]
        if leaves:
            offenders[str(path.relative_to(ROOT))] = leaves
    assert not offenders, f"core modules import leaves directly (go through medbench.registry): {offenders}"


def test_core_has_no_import_cycle():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    graph_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph_mod)
    files = graph_mod.module_files()
    graph = {name: {t for t, _ in graph_mod.imports(path, name, set(files))} for name, path in files.items()}
    core = {k: {t for t in v if not graph_mod.is_leaf(t) and t != "medbench"} for k, v in graph.items()
            if not graph_mod.is_leaf(k)}
    cycles = graph_mod.sccs(core)
    assert cycles == []
