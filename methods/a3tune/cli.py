"""``medbench weak-labels``: build, evaluate and train the scorer of A³TUNE's prompt-aware weak labels.

A subcommand A³TUNE provides (``A3Tune.commands``); the CLI finds it through the method registry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medbench.cli_commands.common import formatter

EPILOG = """examples:
  medbench weak-labels train-scorer
  medbench weak-labels build --task phantom-vqa --split train
  medbench weak-labels eval --task phantom-vqa --split test --method-args scorer=random
  medbench weak-labels prepare-biomedclip ~/downloads/BiomedCLIP ~/models/biomedclip
  medbench weak-labels check --sam ~/models/sam_vit_h_4b8939.pth --biomedclip ~/models/biomedclip
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
    prep = actions.add_parser(
        "prepare-biomedclip", formatter_class=formatter(),
        help="turn a downloaded BiomedCLIP folder into one open_clip loads offline (local-dir:)",
        description="SRC: the BiomedCLIP download (open_clip_config.json, open_clip_pytorch_model.bin, "
        "tokenizer_config.json, vocab.txt/tokenizer.json, and BiomedBERT's config.json unless --text-config). "
        "DST: a new folder for biomedclip_dir= (its config names DST/text by absolute path; rerun after moving it).")
    prep.add_argument("src", help="downloaded BiomedCLIP folder")
    prep.add_argument("dst", help="folder to create")
    prep.add_argument("--text-config", help="BiomedBERT's config.json (file or folder) when it is not SRC/config.json")
    prep.add_argument("--force", action="store_true", help="replace a non-empty DST")
    prep.set_defaults(func=main)
    chk = actions.add_parser("check", formatter_class=formatter(),
                             help="load the real weak-label weights once (SAM checkpoint, BiomedCLIP folder)")
    chk.add_argument("--sam", help="SAM checkpoint (.pth, official format)")
    chk.add_argument("--sam-arch", default="auto", choices=("auto", "vit_h", "vit_l", "vit_b"))
    chk.add_argument("--biomedclip", help="prepared BiomedCLIP folder")
    chk.set_defaults(func=main)
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
    if args.action == "prepare-biomedclip":  # without the weak-labels extra: medbench's one-line error, exit 2
        return _prepare(args)
    if args.action == "check":
        return _check(args)
    return _labels(args)


def _prepare(args: argparse.Namespace) -> int:
    from medbench.methods.a3tune.scorers import prepare_biomedclip

    dst = prepare_biomedclip(Path(args.src), Path(args.dst), Path(args.text_config) if args.text_config else None,
                             force=args.force)
    print(f"BiomedCLIP ready for offline use: --method-args scorer=biomedclip biomedclip_dir={dst}")
    return 0


def _check(args: argparse.Namespace) -> int:
    import time

    if not args.sam and not args.biomedclip:
        raise FileNotFoundError("weak-labels check: give --sam FILE and/or --biomedclip DIR")
    if args.sam:
        from medbench.methods.a3tune.segmenters import load_sam

        start = time.perf_counter()
        model, arch = load_sam(Path(args.sam).expanduser(), args.sam_arch)
        n = sum(p.numel() for p in model.parameters())
        print(f"SAM ok: {args.sam}: {arch}, {n / 1e6:.1f} M parameters, "
              f"{model.image_encoder.img_size}-px input ({time.perf_counter() - start:.1f} s)")
    if args.biomedclip:
        from PIL import Image

        from medbench.methods.a3tune.scorers import BiomedClipScorer

        start = time.perf_counter()
        scorer = BiomedClipScorer(args.biomedclip)
        score = float(scorer.score([Image.new("RGB", (64, 64), (128, 128, 128))], "Medical image of lungs.")[0])
        print(f"BiomedCLIP ok: {args.biomedclip}: weights {scorer.fingerprint()['weights']}, "
              f"one crop scored {score:.2f} ({time.perf_counter() - start:.1f} s)")
    return 0


def _labels(args: argparse.Namespace) -> int:
    from medbench.method import parse_method_args
    from medbench.methods.a3tune import A3Tune
    from medbench.registry import TASKS
    from medbench.selection import check_limit

    check_limit(args.limit)
    method = A3Tune(**parse_method_args(args.method_args))
    task = TASKS.get(args.task)(data_root=args.data_root)
    split = args.split or (task.train_split if args.action == "build" else task.eval_split)
    progress = not getattr(args, "quiet", False)
    labeler = method.labeler(task, progress=progress)  # weights checked before any data is read
    samples = sorted(task.load(split), key=lambda s: s.id)
    if args.limit is not None:
        samples = samples[: args.limit]
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
