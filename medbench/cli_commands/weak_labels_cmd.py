"""``medbench weak-labels``: build, evaluate and train the scorer of A³TUNE's prompt-aware weak labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medbench.cli_commands.common import formatter

EPILOG = """examples:
  medbench weak-labels train-scorer
  medbench weak-labels build --task phantom-vqa --split train
  medbench weak-labels eval --task phantom-vqa --split test --method-args scorer=random
  medbench weak-labels build --task slake --method-args sam_checkpoint=~/models/sam_vit_h_4b8939.pth \\
      biomedclip_dir=~/models/biomedclip
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weak-labels", help="A3TUNE weak labels: build the caches, measure quality, train clip_small",
                       epilog=EPILOG, formatter_class=formatter())
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext in (("build", "segment and score a split (cached, resumable)"),
                           ("eval", "precision/recall/IoU/hit@1 of the weak labels against GT RoIs")):
        a = actions.add_parser(name, help=helptext, formatter_class=formatter())
        a.add_argument("--task", required=True, help="task name, e.g. phantom-vqa")
        a.add_argument("--split", help="split (default: the task's train split for build, eval split for eval)")
        a.add_argument("--limit", type=int, help="first N ≥ 1 samples only")
        a.add_argument("--data-root", help="dataset directory (default $MEDBENCH_DATA/<task>)")
        a.add_argument("--model", default="tiny-med-llava",
                       help="backbone whose token grid the labels are projected on (eval; default tiny-med-llava)")
        a.add_argument("--pixel-only", action="store_true", help="eval: skip the token-level metrics (no backbone)")
        a.add_argument("--output-dir", default="results/weak_labels", help="eval: where weak_label_quality.json goes")
        a.add_argument("--method-args", nargs="*", action="extend", metavar="K=V",
                       help="a3tune options: segmenter, scorer, top_k, query, grid_rule, sam_checkpoint, …")
        a.set_defaults(func=main)
    t = actions.add_parser("train-scorer", help="train the embedded clip_small scorer on phantom data",
                           formatter_class=formatter())
    t.add_argument("--images", type=int, default=None, help="phantom pretrain images to train on (default 300)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 400)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="folder to write (default: the cached location a3tune uses)")
    t.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.action == "train-scorer":
        return _train_scorer(args)
    from medbench.method import parse_method_args
    from medbench.methods.a3tune import A3Tune
    from medbench.registry import TASKS
    from medbench.runner import check_limit

    check_limit(args.limit)
    method = A3Tune(**parse_method_args(args.method_args))
    task = TASKS.get(args.task)(data_root=args.data_root)
    split = args.split or (task.train_split if args.action == "build" else task.eval_split)
    samples = sorted(task.load(split), key=lambda s: s.id)
    if args.limit is not None:
        samples = samples[: args.limit]
    progress = not getattr(args, "quiet", False)
    labeler = method.labeler(task, progress=progress)
    top_k = method.params.top_k or _preset_k(method, task)
    if args.action == "build":
        rows = labeler.score_samples(task.name, split, samples)
        empty = sum(1 for s in samples if not rows[s.id]["candidates"])
        print(f"{len(samples)} samples scored ({empty} without candidates): {labeler.scores_path(task.name, split)}")
        return 0
    return _eval(args, method, task, split, samples, labeler, top_k)


def _preset_k(method, task) -> int:
    from medbench.methods.a3tune.params import resolve

    return resolve(method.params, task, 1, 1).top_k


def _eval(args, method, task, split, samples, labeler, top_k) -> int:
    from medbench.atomic import atomic_write_json
    from medbench.methods.a3tune.quality import pixel_quality, token_quality
    from medbench.methods.a3tune.weak_labels import weak_labels

    report = {"task": task.name, "split": split, "n_samples": len(samples), "top_k": top_k,
              "segmenter": labeler.segmenter.name, "scorer": labeler.scorer.name, "query": labeler.query,
              "label_fp": labeler.label_fp, "pixel": pixel_quality(labeler, task.name, split, samples, top_k)}
    if not args.pixel_only:
        from medbench.models import load_backbone

        backbone = load_backbone(args.model, device="cpu")
        geometry = backbone.geometry()
        labels = weak_labels(labeler, task.name, split, samples, geometry, top_k, method.params.grid_rule)
        report["model"] = args.model
        report["grid_rule"] = method.params.grid_rule
        report["token"] = token_quality(labels, samples, geometry, method.params.grid_rule)
        report["labels"] = labels.summary()
    out = Path(args.output_dir) / task.name / split / f"{labeler.label_fp}-k{top_k}" / "weak_label_quality.json"
    atomic_write_json(out, report)
    print(json.dumps({k: report[k] for k in ("pixel", "token") if k in report}, indent=1))
    print(f"written: {out}")
    return 0


def _train_scorer(args: argparse.Namespace) -> int:
    from medbench.methods.a3tune.scorers import (
        SCORER_IMAGES,
        SCORER_STEPS,
        default_scorer_dir,
        train_clip_small,
    )

    images, steps = args.images or SCORER_IMAGES, args.steps or SCORER_STEPS
    folder = Path(args.out) if args.out else default_scorer_dir(images, steps, args.seed)
    path = train_clip_small(folder, n_images=images, steps=steps, seed=args.seed,
                            progress=not getattr(args, "quiet", False))
    note = "" if (args.out is None and images == SCORER_IMAGES and steps == SCORER_STEPS and args.seed == 0) else (
        f"\nuse it with --method-args scorer=clip_small scorer_dir={path}")
    print(f"clip_small scorer: {path}{note}")
    return 0
