"""``medbench pretrain``: rebuild the embedded backbone from scratch."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="rebuild tiny-med-llava from scratch on the phantom pretrain splits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  medbench pretrain --output /tmp/tiny      # then: medbench run --model /tmp/tiny ...\n"
        "  medbench pretrain --steps 300 --output /tmp/tiny-quick\n"
        "  medbench pretrain --init-from medbench/assets/tiny-med-llava --steps 800 --lr 5e-4 --output /tmp/tiny-more",
    )
    p.add_argument("--output", required=True, help="directory to write the checkpoint to (the shipped one "
                   "lives in medbench/assets/tiny-med-llava)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", metavar="DIR", help="continue training an existing checkpoint (keeps its tokenizer)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from medbench.pretrain import PretrainConfig, pretrain

    record = pretrain(args.output, PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                                  seed=args.seed, init_from=args.init_from), progress=not args.quiet)
    record.pop("loss_curve")
    print(json.dumps(record, indent=1))
    return 0
