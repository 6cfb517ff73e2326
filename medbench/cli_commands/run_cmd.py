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
    add_run_flags(p)
    p.add_argument("--no-attention", action="store_true", help="skip attention capture (no coverage/intensity)")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even if some samples failed")
    p.add_argument("--json", action="store_true", help="print results.json instead of a table")
    p.add_argument("--image-root", metavar="DIR",
                   help="a second root holding the task's images when they are not under --data-root "
                   "(iu-xray-vqa: R2Gen's iu_xray/; omnimedvqa: the OmniMedVQA folder with Images/; "
                   "mimic-cxr-report: the MIMIC-CXR-JPG folder with files/); see `medbench data check --help`")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from medbench.runner import run
    from medbench.summary import summary_table

    cfg = build_run_config(args)
    if args.image_root is not None:  # overrides --config's image_root
        cfg.image_root = args.image_root
    if args.no_attention:  # a flag only switches on; an unset flag leaves --config's value
        cfg.attention = False
    if args.allow_failures:
        cfg.allow_failures = True
    results = run(cfg)
    print(json.dumps(results, indent=2) if args.json else summary_table(results))
    return 0
