"""``medbench bench {decode,train}``: performance benchmarks (never run by tests).

``train`` runs LoRA, A³TUNE without alignment (``a3moe``), full A³TUNE and A³TUNE with the naive
all-heads capture on the same batches in one process and prints step time and peak memory with
their ratios to LoRA (target: A³TUNE ≤ 1.10× step time, ≤ 1.05× peak memory).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure decoding throughput or training step time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  medbench bench decode --batch-sizes 1 16\n  medbench bench decode --methods greedy beam --json\n"
        "  medbench bench train --batch-size 8 --steps 10\n"
        "  medbench bench train --configs lora a3tune --json\n"
        "  medbench bench train --shape llava-med-v1.5 --device cuda --batch-size 4   # random 7B weights\n"
        "  medbench bench decode --shape llava-med-v1.5 --device cuda --batch-sizes 1 16   # random 7B weights, bf16",
    )
    p.add_argument("what", choices=["decode", "train"])
    p.add_argument("--model", default="tiny-med-llava")
    p.add_argument("--task", default="phantom-vqa")
    p.add_argument("--methods", nargs="+", default=["greedy"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    p.add_argument("--batch-size", type=int, default=8, help="training batch size (train)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per configuration (train)")
    p.add_argument("--rounds", type=int, default=2, help="times the configurations take turns (train)")
    p.add_argument("--configs", nargs="+", metavar="NAME",
                   help="training configurations side by side (train; ratios are against lora; default: every "
                   "configuration the tuning methods provide)")
    p.add_argument("--samples", type=int, default=64, help="decode: evaluation samples per timed pass")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3,
                   help="decode: timed passes per configuration, taking turns across configurations (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="decode: untimed passes per configuration first")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--shape", choices=["llava-med-v1", "llava-med-v1.5", "huatuogpt-vision-7b"],
                   help="bench a random-weight model of this real architecture and size instead of --model")
    p.add_argument("--shape-scale", choices=["full", "tiny"], default="full",
                   help="full: the real sizes (needs a GPU); tiny: same architecture shrunk, for CPU checks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from tabulate import tabulate

    from medbench.bench import bench_decode
    from medbench.bench_train import bench_configs, bench_train
    from medbench.errors import ConfigError

    if args.what == "decode":
        out = bench_decode(args.model, args.task, tuple(args.methods), tuple(args.batch_sizes), args.samples,
                           args.max_new_tokens, args.device, args.repeats, args.shape, args.shape_scale,
                           warmup=args.warmup, progress=not args.quiet)
        rows = out["rows"]
    else:
        known = tuple(bench_configs())
        unknown = [c for c in args.configs or () if c not in known]
        if unknown:
            raise ConfigError(f"--configs {' '.join(unknown)}: unknown; choose from {', '.join(known)}")
        out = bench_train(args.model, args.task, args.batch_size, args.steps, device=args.device, shape=args.shape,
                          shape_scale=args.shape_scale, configs=tuple(args.configs or known),
                          rounds=args.rounds)
        rows = [{k: v for k, v in r.items() if k != "memory_method"} for r in out["rows"]]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"device {out['device']} · model {out['model']}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if args.what == "train":
        print(f"peak memory: {out['memory_method']}")
        ratio_rows = [{"ratio": k, **v} for k, v in out["ratios"].items()]
        if ratio_rows:
            print(tabulate(ratio_rows, headers="keys", tablefmt="github"))
        if out["within_targets"] is not None:
            targets = out["targets"]
            print(f"a3tune/lora within targets (≤{targets['step_time']}× {out['time_basis'].replace('_', ' ')}, "
                  f"≤{targets['peak_memory']}× memory): "
                  f"{'yes' if out['within_targets'] else 'no'}")
    return 0
