"""``medbench train``: train a tuning method's adapter alone (cached by fingerprint)."""

from __future__ import annotations

import argparse

from medbench import distributed as dist
from medbench.cli_commands.common import add_run_flags, build_run_config, formatter
from medbench.errors import ConfigError
from medbench.models import load_backbone, resolve_device
from medbench.registry import METHODS
from medbench.run_config import open_run_task, resolve_methods

EPILOG = """Training saves a step checkpoint every checkpoint_every steps (a method argument, default 50;
0 turns it off) in <checkpoint>/state/ and a rerun resumes from it exactly; the state is removed
once the adapter is complete. Under torchrun or accelerate launch every process trains on its
slice of each batch (data-parallel) and rank 0 writes the checkpoint. With an accelerate config
whose distributed_type is DEEPSPEED (ZeRO stage 1 or 2; needs deepspeed installed) the optimizer
state is sharded and each rank saves its own partition; see the README, "Multi-GPU training".

examples:
  medbench train --method lora --task phantom-vqa
  medbench train --method lora --task phantom-report --method-args epochs=2 lr=1e-4
  medbench train --method lora --task phantom-vqa --method-args checkpoint_every=10
  torchrun --nproc-per-node 2 -m medbench train --method lora --task phantom-vqa
  accelerate launch --config_file zero2.yaml -m medbench train --method a3tune --task slake --data-root DIR
  medbench train --method lora --task omnimedvqa --data-root /data/CARES/data/OmniMedVQA --image-root /data/OmniMedVQA
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tuning method (lora, a3tune) on a task's train split",
                       epilog=EPILOG, formatter_class=formatter())
    add_run_flags(p, "train")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from medbench.tuning_plan import prepare_tuning  # lazy: torch, kept off CLI start-up

    cfg = build_run_config(args)  # --image-root, like every flag, overrides --config
    if METHODS.entry(cfg.method).info["kind"] != "tuning":
        raise ConfigError(f"--method {cfg.method} is a decoding method; train takes lora or a3tune")
    res = resolve_methods(cfg)
    task = open_run_task(cfg)  # data root and image root, as `run` opens it
    device = resolve_device(cfg.device)
    launched = dist.from_env()
    if launched.parallel and cfg.device_map:
        raise ConfigError("--device-map shards one model in one process; do not combine it with data-parallel ranks")
    if device == "cuda" and launched.parallel:
        device = f"cuda:{launched.local_rank}"
    group = dist.init_group(launched)
    try:
        backbone = load_backbone(cfg.model, device=device, device_map=cfg.device_map)
        _, info = prepare_tuning(cfg, res, backbone, task, device)
    finally:
        dist.finish_group(group)
    if launched.is_main:
        print(f"{res.tuning} checkpoint: {info['checkpoint']}")
    return 0
