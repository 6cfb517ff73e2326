"""``medbench score RUN_DIR``: re-score a run from its predictions file (no model needed)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="re-score a run directory from predictions.jsonl",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  medbench score results/runs/tiny-med-llava/phantom-vqa/none+greedy")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print results.json instead of a table")
    p.add_argument("--bertscore-model", metavar="DIR", help="local roberta-large directory for BERTScore")
    p.add_argument("--clinical-python", metavar="PATH", help="clinical-metrics interpreter")
    p.add_argument("--medheval", action="store_true", help="also score the report@medheval protocol")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from medbench.scoring import score_run
    from medbench.summary import summary_table

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").exists() or not (run_dir / "predictions.jsonl").exists():
        raise FileNotFoundError(f"{run_dir} is not a medbench run directory (needs run.json and predictions.jsonl)")
    results = score_run(run_dir, report_options={"bertscore_model": args.bertscore_model,
                                                 "clinical_python": args.clinical_python,
                                                 "medheval": args.medheval})
    print(json.dumps(results, indent=2) if args.json else summary_table(results))
    return 0
