"""``medbench baselines {generate,check}``: the CI regression of the embedded-tier numbers."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """examples:
  medbench baselines check                                  # what CI runs; exit 1 on a regression
  medbench baselines check --only 'phantom-vqa/none+*'      # a subset (glob on task/tuning+decoding)
  medbench baselines check --only phantom-vqa/none+pai --set phantom-vqa/none+pai:alpha=1.0
  medbench baselines generate                               # rewrite results/baselines/ (minutes)

The suite: every decoding method on the base model and on LoRA, and A3TUNE (greedy), on the first
48 phantom-vqa and the first 16 phantom-report test samples; adapters trained on 192 training
samples for one epoch. Tolerances and their justification: results/baselines/README.md.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baselines", help="regenerate or check the embedded-tier baselines CI regresses against",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["generate", "check"])
    p.add_argument("--baselines", default=None, help="baseline directory (default results/baselines)")
    p.add_argument("--workdir", default=None,
                   help="scratch directory for runs and adapters, emptied first (default results/regression)")
    p.add_argument("--only", nargs="+", metavar="GLOB", help="check: entries whose task/tuning+decoding matches")
    p.add_argument("--set", nargs="+", default=[], metavar="ENTRY:K=V", dest="perturb",
                   help="check: override a decoding argument of one entry (to see the check catch a change)")
    p.add_argument("--noise-threads", type=int, default=1,
                   help="generate: CPU threads of the second pass that measures float noise (default 1)")
    p.add_argument("--json", action="store_true", help="check: print every comparison as JSON")
    p.set_defaults(func=main)


def _perturbations(items: list[str]) -> dict[str, dict[str, str]]:
    from medbench.errors import ConfigError
    from medbench.method import parse_method_args

    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, colon, kv = item.partition(":")
        if not colon or "=" not in kv:
            raise ConfigError(f"--set {item!r}: expected ENTRY:NAME=VALUE, e.g. phantom-vqa/none+pai:alpha=1.0")
        out.setdefault(key, {}).update(parse_method_args([kv]))
    return out


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medbench import regression as R

    suite = R.Suite()
    baselines = Path(args.baselines or R.DEFAULT_BASELINES)
    workdir = Path(args.workdir or R.DEFAULT_WORKDIR)
    say = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.action == "generate":
        if args.only or args.perturb:
            print("medbench: error: --only and --set apply to check; generate always runs the whole suite",
                  file=sys.stderr)
            return 2
        tol = R.generate(suite, baselines, workdir, noise_threads=args.noise_threads, progress=say)
        print(f"wrote {len(tol['entries'])} baselines and tolerances.json to {baselines}")
        return 0
    perturb = _perturbations(args.perturb)
    unknown = sorted(set(perturb) - {e.key for e in suite.entries()})
    if unknown:
        print(f"medbench: error: --set names no suite entry: {', '.join(unknown)}", file=sys.stderr)
        return 2
    deviations = R.check(suite, baselines, workdir, patterns=args.only, perturb=perturb, progress=say)
    failed = [d for d in deviations if not d.ok]
    if args.json:
        print(json.dumps([{**d.__dict__, "delta": d.delta} for d in deviations], indent=1))
    else:
        entries = len({d.key for d in deviations})
        if failed:
            print(R.render(deviations))
            print(f"\n{len(failed)} of {len(deviations)} comparisons over {entries} entries moved beyond "
                  f"their tolerance. If the change is intended, run `{R.REGENERATE}` and commit "
                  f"{baselines}.")
        else:
            print(f"all {len(deviations)} comparisons over {entries} entries within tolerance")
    return 1 if failed else 0
