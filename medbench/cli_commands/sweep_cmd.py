"""``medbench sweep``: A³TUNE ablations and hyperparameter sweeps → ``sweep.csv`` (+ PNG plots).

Each point is a full ``medbench run --method a3tune`` (trained adapters and predictions are
cached by fingerprint, so an interrupted sweep resumes). ``--figure`` reproduces the paper's
grids: ``fig4`` (weak vs GT labels vs LoRA), ``fig5a`` (K), ``fig5b`` (R as a share of the L·H
heads: 0, 1/32 … 1/2, all = 0, 32 … 1024 on 32×32 heads), ``fig7a`` (w/o Q-MoE, K-MoE,
A³MoE), ``fig7b`` (B at O^k=16), ``fig8`` (λ). ``--param key=v1,v2`` sweeps any option.
Plots need matplotlib; without it the CSV is written and the PNG skipped with a message.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

from medbench.cli_commands.common import formatter

log = logging.getLogger("medbench")

ALL_HEADS = "100000"
LORA = {"qmoe": "off", "kmoe": "off", "lam": "0"}
FIGURES: dict[str, tuple[str, list[tuple[str, dict[str, str]]]]] = {
    "fig4": ("labels", [("LoRA", LORA), ("weak", {"labels": "weak"}), ("GT", {"labels": "gt"})]),
    "fig5a": ("K", [(str(k), {"top_k": str(k)}) for k in (1, 2, 3, 4, 6, 8)]),
    "fig5b": ("R / (L·H)", [("0", {"top_heads": "0"})] + [(f"1/{d}", {"top_heads": str(1 / d)}) for d in (32, 16, 8, 4, 2)]
              + [("1", {"top_heads": ALL_HEADS})]),
    "fig7a": ("variant", [("A3TUNE", {}), ("w/o Q-MoE", {"qmoe": "off"}), ("w/o K-MoE", {"kmoe": "off"}),
                          ("w/o A3MoE", {"qmoe": "off", "kmoe": "off"}), ("LoRA", LORA)]),
    "fig7b": ("B", [(str(b), {"kmoe_top_b": str(b), "kmoe_experts": "16"}) for b in (1, 2, 3, 4, 5)]),
    "fig8": ("λ", [(str(v), {"lam": str(v)}) for v in (0, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2)]),
}
DEFAULT_METRICS = {"vqa": ("closed_accuracy", "open_recall"), "report": ("bleu4", "rouge_l")}

EPILOG = """examples:
  medbench sweep --task phantom-vqa --figure fig8 --limit 100
  medbench sweep --task phantom-vqa --param top_k=1,2,4 --method-args epochs=1
  medbench sweep --task slake --model llava-med-v1.5 --figure fig7a --method-args sam_checkpoint=… biomedclip_dir=…
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="A3TUNE ablations / sweeps → CSV and plots (Figures 4, 5, 7, 8)",
                       epilog=EPILOG, formatter_class=formatter())
    p.add_argument("--task", required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--figure", choices=sorted(FIGURES), help="a paper figure's grid")
    what.add_argument("--param", metavar="KEY=V1,V2,…", help="sweep one a3tune option")
    p.add_argument("--method-args", nargs="*", metavar="K=V", help="a3tune options shared by every point")
    p.add_argument("--metric", action="append", help="metric(s) to plot (default by task kind)")
    p.add_argument("--model", default="tiny-med-llava")
    p.add_argument("--decoding", default="greedy")
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--output-dir", default="results/sweeps", help="sweep.csv / PNG go to <dir>/<task>/<name>")
    p.add_argument("--runs-dir", default="results/runs")
    p.add_argument("--checkpoint-dir", default="results/checkpoints")
    p.set_defaults(func=main)


def points(args: argparse.Namespace) -> tuple[str, str, list[tuple[str, dict[str, str]]]]:
    """(sweep name, x label, [(x value, method args)])."""
    from medbench.errors import ConfigError

    if args.figure:
        label, grid = FIGURES[args.figure]
        return args.figure, label, grid
    key, sep, values = args.param.partition("=")
    if not sep or not values:
        raise ConfigError(f"--param {args.param!r}: expected KEY=V1,V2,…")
    return f"param-{key}", key, [(v, {key: v}) for v in values.split(",") if v]


def run_point(args: argparse.Namespace, extra: dict[str, str]) -> dict[str, Any]:
    from medbench.method import parse_method_args
    from medbench.runner import RunConfig, run

    method_args = {**parse_method_args(args.method_args), **extra}
    cfg = RunConfig(method="a3tune", task=args.task, model=args.model, decoding=args.decoding,
                    method_args={f"tuning.{k}": v for k, v in method_args.items()}, limit=args.limit, seed=args.seed,
                    output_dir=args.runs_dir, checkpoint_dir=args.checkpoint_dir, device=args.device,
                    progress=not getattr(args, "quiet", False))
    return run(cfg)


def main(args: argparse.Namespace) -> int:
    from medbench.registry import TASKS

    name, xlabel, grid = points(args)
    kind = TASKS.get(args.task).kind
    metrics = tuple(args.metric or DEFAULT_METRICS.get(kind, ()))
    rows = []
    for x, extra in grid:
        log.info("sweep %s: %s=%s", name, xlabel, x)
        results = run_point(args, extra)
        values = {k: v for k, v in (results.get("metrics") or {}).items() if isinstance(v, (int, float))}
        rows.append({"x": x, "method_args": " ".join(f"{k}={v}" for k, v in extra.items()), **values})
    out_dir = Path(args.output_dir) / args.task / name
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["x", "method_args"] + sorted({k for r in rows for k in r} - {"x", "method_args"})
    with open(out_dir / "sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {out_dir / 'sweep.csv'}")
    plot(rows, metrics, xlabel, out_dir / "sweep.png", bars=name in ("fig4", "fig7a"), title=f"{args.task}: {name}")
    return 0


def plot(rows: list[dict[str, Any]], metrics: tuple[str, ...], xlabel: str, path: Path, *, bars: bool,
         title: str) -> None:
    """Line plot (sweeps) or grouped bars (ablations) of ``metrics`` against x."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: wrote the CSV only (pip install matplotlib for the PNG)")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = list(range(len(rows)))
    width = 0.8 / max(1, len(metrics))
    for i, metric in enumerate(metrics):
        ys = [r.get(metric) for r in rows]
        ys = [float("nan") if y is None else float(y) for y in ys]
        if bars:
            ax.bar([x + (i - (len(metrics) - 1) / 2) * width for x in xs], ys, width, label=metric)
        else:
            ax.plot(xs, ys, marker="o", label=metric)
    ax.set_xticks(xs, [str(r["x"]) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    print(f"written: {path}")
