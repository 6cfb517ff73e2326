"""``medbench data {check,manifest,probe}``: validate a local dataset; regenerate a derived-split manifest;
run the shortcut probes."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  medbench data check --task slake --data-root /data/Slake1.0
  medbench data check --task vqa-rad --json
  medbench data check --task iu-xray-vqa --data-root /data/CARES/data/IU-Xray --image-root /data/r2gen/iu_xray
  medbench data check --task mimic-cxr-report --data-root /data/mimic-cxr-reports --image-root /data/mimic-cxr-jpg
  medbench data manifest --task iu-xray-vqa --data-root /data/iu-xray-vqa
  medbench data probe --task phantom-vqa
"""

PROBE_EPILOG = """Trains gradient-boosted classifiers on the train split and scores them on the test split:
text-only (hashed question words), location-blind (words + grey histogram of the whole image) and
RoI-only (words + histogram inside the question's RoI), beside the train split's majority answer,
overall and per content type, for closed questions and for open questions over the answers seen
at least --min-count times in train. Exit 2: not a VQA task (or a bad option); exit 1: no train
questions, no closed test questions, or a missing dataset.

examples:
  medbench data probe --task phantom-vqa
  medbench data probe --task phantom-vqa --json
  medbench data probe --task phantom-vqa --closed-only
  medbench data probe --task slake --data-root /data/Slake1.0 --limit-train 2000 --seed 1
  medbench -q data probe --task vqa-rad --data-root /data/vqa-rad --json   # no progress bar
"""


IMAGE_ROOT_HELP = ("a second root holding the images when they are not under --data-root (iu-xray-vqa: R2Gen's "
                   "iu_xray/; omnimedvqa: the OmniMedVQA folder with Images/; mimic-cxr-report: the MIMIC-CXR-JPG "
                   "folder with files/, or R2Gen's mimic_cxr/)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate local datasets and their split manifests", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = p.add_subparsers(dest="data_command", metavar="{check,manifest,probe}")
    c = inner.add_parser("check", help="validate a dataset's layout, images and counts", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--task", required=True, help="task name (see `medbench list tasks`)")
    c.add_argument("--data-root", help="dataset directory (default $MEDBENCH_DATA/<task>)")
    c.add_argument("--image-root", metavar="DIR", help=IMAGE_ROOT_HELP)
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--no-open-images", dest="open_images", action="store_false",
                   help="check that images exist but do not decode them")
    c.add_argument("--allow-source-mismatch", action="store_true",
                   help="use a split manifest even if the local source file differs from its recorded sha256")
    c.add_argument("--grid-model", metavar="NAME_OR_PATH",
                   help="report the share of RoIs visible on this backbone's visual-token grid (default: "
                        "tiny-med-llava for embedded tasks, none otherwise; 'none' skips it)")
    c.set_defaults(func=check)
    m = inner.add_parser("manifest", help="write the derived-split manifest of a local copy", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--task", required=True, help="a task with a derived split (e.g. iu-xray-vqa)")
    m.add_argument("--data-root", help="dataset directory (default $MEDBENCH_DATA/<task>)")
    m.add_argument("--image-root", metavar="DIR", help=IMAGE_ROOT_HELP)
    m.add_argument("--out", help="output directory (default: the package's tasks/manifests/)")
    m.set_defaults(func=manifest)
    pr = inner.add_parser("probe", help="shortcut probes: how much is answerable without looking at the RoI",
                          epilog=PROBE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("--task", required=True, help="a VQA task (see `medbench list tasks`)")
    pr.add_argument("--data-root", help="dataset directory (default $MEDBENCH_DATA/<task>)")
    pr.add_argument("--json", action="store_true", help="print the result as JSON")
    pr.add_argument("--limit-train", type=int, metavar="N", help="train on a random N of the train questions "
                    "(drawn with --seed)")
    pr.add_argument("--seed", type=int, default=0, help="classifier random state and --limit-train draw (default 0)")
    pr.add_argument("--min-count", type=int, default=5, metavar="N",
                    help="open questions: answers seen at least N times in train form the classes (default 5)")
    pr.add_argument("--closed-only", action="store_true", help="skip the open-question probes (faster)")
    pr.set_defaults(func=probe)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def check(args: argparse.Namespace) -> int:
    import json

    from medbench.datacheck import check_task, render_text
    from medbench.task import DataRootError

    try:
        result = check_task(args.task, args.data_root, open_images=args.open_images,
                            allow_source_mismatch=args.allow_source_mismatch, grid_model=args.grid_model,
                            image_root=args.image_root)
    except DataRootError as exc:
        if args.json:
            print(json.dumps({"task": args.task, "error": str(exc)}, indent=2))
        print(f"medbench: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str) if args.json else render_text(result))
    return 0


def manifest(args: argparse.Namespace) -> int:
    from medbench.datacheck import make_task
    from medbench.registry import TASKS
    from medbench.task import DataRootError

    try:
        task = make_task(args.task, args.data_root, image_root=args.image_root)
        if not getattr(task, "derived", False):  # tasks._common.DerivedSplitTask and its kind
            derived = [n for n in TASKS.in_order() if TASKS.entry(n).plugin is None and getattr(TASKS.get(n), "derived", False)]
            print(f"medbench: error: {args.task} uses its official published split; only {', '.join(derived[:-1])} "
                  f"and {derived[-1]} have derived-split manifests", file=sys.stderr)
            return 2
        path = task.write_manifest(args.out)
    except DataRootError as exc:
        print(f"medbench: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def probe(args: argparse.Namespace) -> int:
    import json

    from medbench.probe import ProbeError, probe_task, render_text
    from medbench.task import DataRootError

    try:
        report = probe_task(args.task, args.data_root, seed=args.seed, limit_train=args.limit_train,
                            min_count=args.min_count, include_open=not args.closed_only)
    except (ProbeError, DataRootError) as exc:
        if args.json:
            print(json.dumps({"task": args.task, "error": str(exc)}, indent=2))
        print(f"medbench: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, ProbeError) else 1
    print(json.dumps(report.to_json(), indent=2) if args.json else render_text(report))
    return 0
