"""``medbench show RUN_DIR [RUN_DIR ...] --sample ID``: one sample's image, RoI, weak labels and attention."""

from __future__ import annotations

import argparse
import sys

from medbench.cli_commands.common import formatter

EPILOG = """Panels: the model-input image with the GT RoI (red), the weak labels when a run has them
(weak_labels/<id>.npy in the run directory or a "weak_labels" field in its predictions), then one
attention heatmap per run, titled tuning+decoding. The caption gives the question, the reference
answer and each run's prediction (green: credited, red: not).

examples:
  medbench show results/runs/tiny-med-llava/phantom-vqa/none+greedy --sample test-00003-q1
  medbench show results/runs/tiny-med-llava/phantom-vqa/{none,lora,a3tune}+greedy \\
      --sample test-00003-q1 --output fig6.png
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="PNG of one sample: image, GT RoI, weak labels and attention maps",
                       epilog=EPILOG, formatter_class=formatter())
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories of the same task (one heatmap each)")
    p.add_argument("--sample", required=True, metavar="ID", help="sample id, as in predictions.jsonl")
    p.add_argument("--output", metavar="PNG",
                   help="where to write the figure (default: the first RUN_DIR/show/<id>.png)")
    p.add_argument("--dpi", type=int, default=100, help="resolution (default 100: 300 px per panel)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from medbench.show import ShowError, show

    try:
        result = show(args.run_dirs, args.sample, args.output, dpi=args.dpi)
    except ShowError as exc:
        print(f"medbench: error: {exc}", file=sys.stderr)
        return 2
    print(f"{result.path} ({result.size[0]}x{result.size[1]} px; panels: {', '.join(result.panels)})")
    return 0
