"""``medbench run``: train the tuning method if needed, decode, score, print a summary."""

from __future__ import annotations

import argparse

from medbench.cli_commands.common import add_run_flags, build_run_config, formatter

EPILOG = """examples:
  medbench run --method greedy --task phantom-vqa
  medbench run --method lora --task phantom-vqa                 # train LoRA, then greedy
  medbench run --method beam --tuning lora --task phantom-vqa
  medbench run --method nucleus --task phantom-vqa --method-args top_p=0.8 --seed 3
  medbench run --method nucleus --task phantom-vqa --method-args top_p=0.8 --method-args temperature=0.7
  medbench run --method greedy --task phantom-report --limit 50
  medbench run --config run.yaml --limit 20                     # flags override the file
  medbench run --method greedy --task iu-xray-vqa --data-root /data/CARES/data/IU-Xray --image-root /data/r2gen/iu_xray
  torchrun --nproc-per-node 2 -m medbench run --method lora --task phantom-vqa   # DDP training + sharded eval
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="evaluate a method on a task", epilog=EPILOG, formatter_class=formatter(),
                       description="Train (or reuse) the tuning adapter, decode the test split, score it and "
                       "write predictions.jsonl + results.json under OUTPUT_DIR/<model>/<task>/<tuning>+<decoding>.")
    add_run_flags(p, "run")
    p.add_argument("--json", action="store_true", help="print results.json instead of a table")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from medbench.runner import run
    from medbench.summary import summary_table

    cfg = build_run_config(args)  # a flag given overrides --config; one not given leaves its value
    results = run(cfg)
    print(json.dumps(results, indent=2) if args.json else summary_table(results))
    return 0
