"""``medbench pretrain``: rebuild the embedded backbone from scratch (and probe its visual tokens)."""

from __future__ import annotations

import argparse

STAGE_DEFAULTS = {"lm": {"steps": 800, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 50, "images": 0},
                  "vision": {"steps": 1500, "batch_size": 32, "lr": 1e-3, "checkpoint_every": 100, "images": 4000},
                  "language": {"steps": 1500, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 100,
                               "images": 4000}}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="rebuild tiny-med-llava from scratch on the phantom pretrain splits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Stages: 'vision' trains the vision tower alone with dense per-cell targets from the phantom "
        "masks (structure, lesion, artefact); 'language' then trains the projector and language model on the "
        "frozen tower (multi-turn conversations of phantom v3 pretrain questions and reports, plus a grounding "
        "loss on one attention head); 'lm' (default, how tiny-med-llava v1 was built) trains the whole model on "
        "single-turn pretrain questions and reports. Every stage resumes from OUTPUT/state when rerun with the "
        "same settings. `medbench pretrain probe` fits linear probes for lesions on a model's frozen visual tokens.",
        epilog="examples:\n  medbench pretrain --output /tmp/tiny      # then: medbench run --model /tmp/tiny ...\n"
        "  medbench pretrain --steps 300 --output /tmp/tiny-quick\n"
        "  medbench pretrain --init-from medbench/assets/tiny-med-llava --steps 800 --lr 5e-4 --output /tmp/tiny-more\n"
        "  medbench pretrain --stage vision --init-from medbench/assets/tiny-med-llava --output /tmp/tiny-vision\n"
        "  medbench pretrain --stage vision --steps 1000 --images 4000 --output /tmp/tiny-vision   # rerun: resumes\n"
        "  medbench pretrain --stage language --init-from /tmp/tiny-vision --output /tmp/tiny-v2\n"
        "  medbench pretrain --init-from /tmp/tiny-vision --freeze-vision --output /tmp/tiny-aligned\n"
        "  medbench pretrain probe --model /tmp/tiny-vision --json",
    )
    p.add_argument("--stage", choices=sorted(STAGE_DEFAULTS), default="lm",
                   help="lm: questions and reports (default); vision: dense supervision of the vision tower; "
                   "language: projector + language model on the frozen tower (needs --init-from)")
    p.add_argument("--output", help="directory to write the checkpoint to (the shipped one "
                   "lives in medbench/assets/tiny-med-llava); required unless probing")
    p.add_argument("--steps", type=int, help="optimizer steps (default: lm 800, vision 1500, language 1500)")
    p.add_argument("--batch-size", type=int,
                   help="images, samples or conversations per step (default: lm 16, vision 32, language 16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", metavar="DIR", help="continue training an existing checkpoint (keeps its tokenizer)")
    p.add_argument("--freeze-vision", action="store_true",
                   help="lm stage: keep the vision tower fixed (train projector and language model on top of it)")
    p.add_argument("--images", type=int,
                   help="vision/language stage: pool of pretrain images rendered in memory once and cycled "
                   "(default 4000; vision: 0 renders fresh images every step)")
    p.add_argument("--grounding-rule", default="any", choices=["any", "area50_max", "area50", "nearest_ref"],
                   help="language stage: which token cells of a question's RoI the grounding head is pulled to")
    p.add_argument("--first-token-weight", default="0.5",
                   help="language stage: share of each answer's loss on its first token ('equal': 1/length each)")
    p.add_argument("--heldout-images", type=int, default=200,
                   help="language stage: phantom train images whose closed questions are scored at every checkpoint")
    p.add_argument("--grounding-weight", type=float, default=0.5,
                   help="language stage: weight of the grounding loss on one attention head (0: none)")
    p.add_argument("--lesion-weight", type=float, default=4.0,
                   help="vision stage: weight of the lesion class in the per-cell lesion cross-entropy")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between resumable checkpoints under OUTPUT/state (default: lm 50, vision 100; 0: none)")
    actions = p.add_subparsers(dest="pretrain_action", metavar="ACTION")
    probe = actions.add_parser(
        "probe", help="linear probes for lesions on a model's frozen visual tokens (phantom v3)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Renders phantom v3 train and test images in memory, takes the visual tokens the language model "
        "sees (vision tower + projector) and fits logistic regressions for image-level lesion presence (mean "
        "token) and per-cell lesion occupancy (lesion pixels cover >= 10%% of the cell); prints balanced "
        "accuracy on the test images (0.5 = chance).",
        epilog="examples:\n  medbench pretrain probe\n  medbench pretrain probe --model /tmp/tiny-vision --json\n"
        "  medbench pretrain probe --train-images 200 --test-images 100",
    )
    probe.add_argument("--model", default="tiny-med-llava", help="backbone name or checkpoint directory")
    probe.add_argument("--train-images", type=int, default=600)
    probe.add_argument("--test-images", type=int, default=250)
    probe.add_argument("--data-seed", type=int, default=0)
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.set_defaults(func=probe_main)
    p.set_defaults(func=main, pretrain_parser=p)


def main(args: argparse.Namespace) -> int:
    import json

    if not args.output:
        args.pretrain_parser.error("--output is required")
    defaults = STAGE_DEFAULTS[args.stage]
    steps = args.steps if args.steps is not None else defaults["steps"]
    batch_size = args.batch_size if args.batch_size is not None else defaults["batch_size"]
    lr = args.lr if args.lr is not None else defaults["lr"]
    every = args.checkpoint_every if args.checkpoint_every is not None else defaults["checkpoint_every"]
    images = args.images if args.images is not None else defaults["images"]
    if args.stage == "language":
        from medbench.pretrain_language import LanguagePretrainConfig, pretrain_language

        if not args.init_from:
            args.pretrain_parser.error("--stage language needs --init-from DIR (the vision stage's output)")
        try:
            first_token_weight = None if args.first_token_weight == "equal" else float(args.first_token_weight)
        except ValueError:
            args.pretrain_parser.error(f"--first-token-weight takes a number in (0, 1] or 'equal', "
                                       f"got {args.first_token_weight!r}")
        if first_token_weight is not None and not 0.0 < first_token_weight <= 1.0:
            args.pretrain_parser.error(f"--first-token-weight must be in (0, 1], got {first_token_weight}")
        if images < batch_size:
            args.pretrain_parser.error(f"--images {images} must be at least --batch-size {batch_size}")
        record = pretrain_language(args.output, LanguagePretrainConfig(
            steps=steps, batch_size=batch_size, lr=lr, seed=args.seed, init_from=args.init_from, images=images,
            grounding_weight=args.grounding_weight, heldout_images=args.heldout_images,
            grounding_rule=args.grounding_rule, first_token_weight=first_token_weight,
            checkpoint_every=every), progress=not args.quiet)
        record.pop("curves")
    elif args.stage == "vision":
        from medbench.pretrain_vision import VisionPretrainConfig, pretrain_vision

        record = pretrain_vision(args.output, VisionPretrainConfig(
            steps=steps, batch_size=batch_size, lr=lr, seed=args.seed, init_from=args.init_from, images=images,
            lesion_weight=args.lesion_weight, checkpoint_every=every), progress=not args.quiet)
        record.pop("curves")
    else:
        from medbench.pretrain import PretrainConfig, pretrain

        record = pretrain(args.output, PretrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=args.seed,
                                                      init_from=args.init_from, freeze_vision=args.freeze_vision,
                                                      checkpoint_every=every),
                          progress=not args.quiet)
        record.pop("loss_curve")
    print(json.dumps(record, indent=1))
    return 0


def probe_main(args: argparse.Namespace) -> int:
    import json

    from medbench.models import load_backbone
    from medbench.vision_probe import ProbeConfig, linear_probe

    backbone = load_backbone(args.model)
    result = linear_probe(backbone, ProbeConfig(n_train=args.train_images, n_test=args.test_images,
                                                data_seed=args.data_seed))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"linear probe on the visual tokens of {result['model']} ({result['grid']}x{result['grid']} grid, "
          f"phantom v{result['phantom_version']}; balanced accuracy on test images, chance 0.5)")
    for name, key in (("image: lesion present", "image_lesion"), ("cell: lesion >= 10% of cell", "cell_lesion")):
        r = result[key]
        print(f"  {name:<28} {r['balanced_accuracy']:.3f}   (train {r['train_accuracy']:.3f}; "
              f"{r['n_train']} train / {r['n_test']} test rows, {r['test_positive_rate']:.1%} positive)")
    return 0
