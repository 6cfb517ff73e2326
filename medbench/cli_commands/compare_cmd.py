"""``medbench compare A B``: metric-by-metric differences between two result sets."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="diff two result sets (run dirs, results.json files, or 'paper') with CIs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  medbench compare results/runs results/baselines\n  medbench compare results/runs paper",
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from medbench import compare

    rows = compare.compare(args.a, args.b)
    print(compare.render_compare(rows, args.format, a_label=args.a, b_label=args.b))
    return 0
