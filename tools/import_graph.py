"""Print medbench's internal import graph: which core modules import which leaves, and the cycles.

Usage: python tools/import_graph.py [--all]

Core = ``medbench/*.py`` and ``medbench/cli_commands/*.py`` (and their subpackages other than
methods/tasks); leaves = ``methods/`` (``medbench.methods``) and ``tasks/`` (``medbench.tasks``).
Imports are read with ``ast`` from the source, top-level and inside functions alike (marked
``lazy``); no module is imported. Cycles are strongly connected components of the core graph.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for base, pkg in ((ROOT / "medbench", "medbench"), (ROOT / "methods", "medbench.methods"),
                      (ROOT / "tasks", "medbench.tasks")):
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, bool]]:
    """(imported internal module, lazy?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []
    lazy_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                lazy_nodes.add(id(sub))
    for node in ast.walk(tree):
        lazy = id(node) in lazy_nodes
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.append((t, lazy))
    return found


def is_leaf(mod: str) -> bool:
    return mod.startswith(("medbench.methods", "medbench.tasks"))


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    files = module_files()
    known = set(files)
    graph: dict[str, set[str]] = defaultdict(set)
    leaf_edges: dict[str, set[str]] = defaultdict(set)
    n_top = n_lazy = 0
    for name, path in sorted(files.items()):
        for target, lazy in imports(path, name, known):
            n_lazy += lazy
            n_top += not lazy
            graph[name].add(target)
            if not is_leaf(name) and is_leaf(target):
                leaf_edges[name].add(target)
    print(f"internal imports: {n_top + n_lazy} ({n_lazy} inside functions)")
    print("core modules importing leaves directly:")
    for mod in sorted(leaf_edges):
        print(f"  {mod} -> {', '.join(sorted(leaf_edges[mod]))}")
    core = {k: {t for t in v if not is_leaf(t) and t != "medbench"} for k, v in graph.items() if not is_leaf(k)}
    # pairwise cycles first (the readable ones), then the larger components
    pairs = sorted({tuple(sorted((a, b))) for a, ts in core.items() for b in ts if a in core.get(b, ())})
    print("two-module cycles in core:")
    for a, b in pairs:
        print(f"  {a} <-> {b}")
    print("strongly connected components in core (size > 1):")
    for comp in sccs(core):
        print(f"  {len(comp)}: {', '.join(comp) if len(comp) < 12 or '--all' in sys.argv else ', '.join(comp[:12]) + ', ...'}")


if __name__ == "__main__":
    main()
