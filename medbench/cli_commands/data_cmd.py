"""``medbench data {check,manifest}``: validate a local dataset; regenerate a derived-split manifest."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  medbench data check --task slake --data-root /data/Slake1.0
  medbench data check --task vqa-rad --json
  medbench data manifest --task iu-xray-vqa --data-root /data/iu-xray-vqa
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate local datasets and their split manifests", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = p.add_subparsers(dest="data_command", metavar="{check,manifest}")
    c = inner.add_parser("check", help="validate a dataset's layout, images and counts", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--task", required=True, help="task name (see `medbench list tasks`)")
    c.add_argument("--data-root", help="dataset directory (default $MEDBENCH_DATA/<task>)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--no-open-images", dest="open_images", action="store_false",
                   help="check that images exist but do not decode them")
    c.add_argument("--allow-source-mismatch", action="store_true",
                   help="use a split manifest even if the local source file differs from its recorded sha256")
    c.set_defaults(func=check)
    m = inner.add_parser("manifest", help="write the derived-split manifest of a local copy", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--task", required=True, help="a task with a derived split: iu-xray-vqa, omnimedvqa, mimic-cxr-report")
    m.add_argument("--data-root", help="dataset directory (default $MEDBENCH_DATA/<task>)")
    m.add_argument("--out", help="output directory (default: the package's tasks/manifests/)")
    m.set_defaults(func=manifest)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def check(args: argparse.Namespace) -> int:
    import json

    from medbench.datacheck import check_task, render_text
    from medbench.task import DataRootError

    try:
        result = check_task(args.task, args.data_root, open_images=args.open_images,
                            allow_source_mismatch=args.allow_source_mismatch)
    except DataRootError as exc:
        if args.json:
            print(json.dumps({"task": args.task, "error": str(exc)}, indent=2))
        print(f"medbench: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str) if args.json else render_text(result))
    return 0


def manifest(args: argparse.Namespace) -> int:
    from medbench.datacheck import make_task
    from medbench.tasks._common import DerivedSplitTask

    task = make_task(args.task, args.data_root)
    if not isinstance(task, DerivedSplitTask):
        print(f"medbench: error: {args.task} uses its official published split; only iu-xray-vqa, omnimedvqa and "
              "mimic-cxr-report have derived-split manifests", file=sys.stderr)
        return 2
    path = task.write_manifest(args.out)
    print(f"wrote {path}")
    return 0
