"""``medbench table``: the paper's table layouts from result files (no torch import)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "table", help="render paper-style tables from result files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  medbench table\n  medbench table --table attention --format latex\n"
        "  medbench table --results results/runs --compare-paper\n  medbench table --paper 1",
    )
    p.add_argument("--table", choices=["vqa", "attention", "report", "all"], default="all")
    p.add_argument("--format", choices=["markdown", "latex", "csv", "json"], default="markdown")
    p.add_argument("--results", default="results/runs", help="directory of run results (default results/runs)")
    p.add_argument("--compare-paper", action="store_true", help="show the paper's numbers and deltas beside ours")
    p.add_argument("--paper", type=int, metavar="N", help="render the paper's own Table N from results/paper")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medbench import tables

    if args.paper is not None:
        print(tables.render_paper_table(args.paper, args.format))
        return 0
    if not Path(args.results).exists():
        raise FileNotFoundError(f"no results directory {args.results}; run `medbench run ...` first")
    results = tables.collect_results(args.results)
    print(tables.render(args.table, results, args.format, compare_paper=args.compare_paper))
    return 0
