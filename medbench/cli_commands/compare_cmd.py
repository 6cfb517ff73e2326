"""``medbench compare A B [--paired]``: metric-by-metric differences between two result sets."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  medbench compare results/runs results/baselines
  medbench compare results/runs paper
  medbench compare --paired results/runs/tiny-med-llava/phantom-vqa/none+greedy \\
      results/runs/tiny-med-llava/phantom-vqa/lora+greedy
  medbench compare --paired RUN_A RUN_B --format json --seed 1 --n-resamples 2000
  medbench compare --paired RUN_A RUN_B --intersect     # only the sample ids both runs scored

--paired compares two run directories of one task sample by sample: mean of A, mean of B,
B - A with a paired bootstrap CI (the same resample of sample ids for both runs), and McNemar's
exact test for closed accuracy. Runs of different tasks, or over different sample ids (without
--intersect), are refused with exit code 2.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="diff two result sets (run dirs, results.json files, or 'paper') with CIs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("a", help="result directory, results.json or 'paper' (with --paired: a run directory)")
    p.add_argument("b", help="the other side, as A")
    p.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    g = p.add_argument_group("paired comparison of two runs")
    g.add_argument("--paired", action="store_true",
                   help="per-sample paired bootstrap differences (B - A) and McNemar's test for closed accuracy")
    g.add_argument("--intersect", action="store_true",
                   help="with --paired: use the sample ids both runs scored when their id sets differ")
    g.add_argument("--seed", type=int, help="with --paired: bootstrap seed (default 0)")
    g.add_argument("--n-resamples", type=int, help="with --paired: bootstrap resamples (default 1000)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.paired:
        from medbench import paired

        result = paired.paired_compare(
            args.a, args.b, intersect=args.intersect,
            seed=0 if args.seed is None else args.seed,
            n_resamples=1000 if args.n_resamples is None else args.n_resamples,
        )
        print(paired.render_paired(result, args.format))
        return 0
    given = [flag for flag, value in (("--intersect", args.intersect), ("--seed", args.seed),
                                      ("--n-resamples", args.n_resamples)) if value not in (None, False)]
    if given:
        from medbench.errors import ConfigError

        raise ConfigError(f"{', '.join(given)} only apply with --paired")
    from medbench import compare

    rows = compare.compare(args.a, args.b)
    print(compare.render_compare(rows, args.format, a_label=args.a, b_label=args.b))
    return 0
