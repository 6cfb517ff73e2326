"""``medbench list {methods,tasks,models}``: registered names (no torch import)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list methods, tasks or models",
                       epilog="examples:\n  medbench list methods\n  medbench list tasks --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["methods", "tasks", "models"])
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, kind, ...}")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from tabulate import tabulate

    from medbench.registry import BACKBONES, METHODS, TASKS

    registry = {"methods": METHODS, "tasks": TASKS, "models": BACKBONES}[args.what]
    rows = registry.describe()
    for row in rows:
        row.setdefault("embedded", False) if args.what != "methods" else None
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "name", k))
        print(tabulate([[r.get(k, "") for k in keys] for r in rows], headers=keys))
    return 0
