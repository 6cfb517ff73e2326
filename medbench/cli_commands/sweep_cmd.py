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
from medbench.selection import check_limit

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
    p.add_argument("--method-args", nargs="*", action="extend", metavar="K=V",
                   help="a3tune options shared by every point (repeated flags add up)")
    p.add_argument("--metric", action="append", help="metric(s) to plot (default by task kind)")
    p.add_argument("--model", default="tiny-med-llava")
    p.add_argument("--decoding", default="greedy")
    p.add_argument("--limit", type=int, help="first N ≥ 1 evaluation samples of every point")
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
    from medbench.errors import ConfigError
    from medbench.method import parse_method_args
    from medbench.runner import RunConfig, run  # lazy: torch, kept off CLI start-up

    shared = parse_method_args(args.method_args)
    clash = sorted(set(shared) & set(extra))
    if clash:
        raise ConfigError(f"--method-args {', '.join(clash)}: swept by this sweep, give it only there")
    method_args = {**shared, **extra}
    cfg = RunConfig(method="a3tune", task=args.task, model=args.model, decoding=args.decoding,
                    method_args={f"tuning.{k}": v for k, v in method_args.items()}, limit=args.limit, seed=args.seed,
                    output_dir=args.runs_dir, checkpoint_dir=args.checkpoint_dir, device=args.device,
                    progress=not getattr(args, "quiet", False))
    return run(cfg)


def main(args: argparse.Namespace) -> int:
    from medbench.registry import TASKS

    check_limit(args.limit)

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
    csv_path = write_csv(rows, out_dir / "sweep.csv")
    print(f"written: {csv_path}")
    png = plot_csv(csv_path, metrics, xlabel=xlabel, bars=name in BAR_FIGURES, title=f"{args.task}: {name}")
    if png is not None:
        print(f"written: {png}")
    return 0


BAR_FIGURES = ("fig4", "fig7a")


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per sweep point: ``x``, ``method_args``, then the metrics (sorted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["x", "method_args"] + sorted({k for r in rows for k in r} - {"x", "method_args"})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``sweep.csv``; metric cells as floats (empty cells as None)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key, value in row.items():
            if key not in ("x", "method_args"):
                row[key] = float(value) if value not in ("", None) else None
    return rows


def plot_csv(csv_path: Path, metrics: tuple[str, ...] = (), *, xlabel: str = "x", bars: bool = False,
             title: str = "", out: Path | None = None) -> Path | None:
    """``sweep.png`` beside ``csv_path`` (or ``out``): ``metrics`` (default: every metric column) against x.

    The style of the paper's Figures 4–8: grouped bars for the ablations (Fig. 4, 7a), lines with
    markers for the sweeps (Fig. 5, 7b, 8); VQA and report metrics ×100. Returns None, with a
    message, when matplotlib is missing.
    """
    from medbench.summary import PERCENT

    rows = read_csv(Path(csv_path))
    columns = [k for k in (rows[0] if rows else {}) if k not in ("x", "method_args")]
    metrics = tuple(m for m in metrics if m in columns) or tuple(columns)
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: wrote the CSV only (pip install matplotlib for the PNG)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(out) if out is not None else Path(csv_path).with_suffix(".png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = list(range(len(rows)))
    width = 0.8 / max(1, len(metrics))
    for i, metric in enumerate(metrics):
        scale = 100.0 if metric in PERCENT else 1.0
        ys = [float("nan") if r.get(metric) is None else r[metric] * scale for r in rows]
        if bars:
            ax.bar([x + (i - (len(metrics) - 1) / 2) * width for x in xs], ys, width, label=metric)
        else:
            ax.plot(xs, ys, marker="o", label=metric)
    ax.set_xticks(xs, [str(r["x"]) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (×100)" if all(m in PERCENT for m in metrics) else "score")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if metrics:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
