"""Choose A³TUNE's λ, R and K on the val split (never on test).

Each val run is scored by the mean of its closed accuracy and open recall (ties: closed accuracy);
the script prints the best run's method arguments as they were given (so the test runs of that
setting reuse its adapter: the fingerprint hashes the arguments, and ``top_k=4`` is not ``top_k``
left at its default) and writes every val run with its score to ``<RUNS>/selection.md``.

    python choose.py RUNS/val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def val_runs(root: Path) -> list[dict]:
    """Resolved (λ, R, K) and val metrics of every a3tune run under ``root``."""
    out = []
    for path in sorted(root.rglob("results.json")):
        result = json.loads(path.read_text())
        if result.get("tuning") != "a3tune" or result.get("split") != "val":
            continue
        run = json.loads((path.parent / "run.json").read_text())
        resolved = json.loads((Path(run["tuning_checkpoint"]) / "training.json").read_text())["resolved"]
        m = result["metrics"]
        out.append({"lam": resolved["lam"], "R": resolved["top_heads"], "K": resolved["top_k"],
                    "closed": m["closed_accuracy"], "open": m["open_recall"],
                    "score": (m["closed_accuracy"] + m["open_recall"]) / 2, "run": str(path.parent),
                    "args": " ".join(f"{k}={v}" for k, v in sorted(run["config"]["method_args"].items()))})
    if not out:
        raise SystemExit(f"no a3tune val runs under {root}")
    return out


def reference_runs(root: Path) -> list[str]:
    """Table rows for the val runs that are not candidates (base model, LoRA): context, not choices."""
    rows = []
    for path in sorted(root.rglob("results.json")):
        result = json.loads(path.read_text())
        if result.get("tuning") == "a3tune" or result.get("split") != "val":
            continue
        m = result["metrics"]
        name = "LoRA" if result["tuning"] == "lora" else f"base model ({result['decoding']})"
        rows.append(f"| {name} | – | – | {100 * m['closed_accuracy']:.1f} | {100 * m['open_recall']:.1f} "
                    f"| {50 * (m['closed_accuracy'] + m['open_recall']):.1f} (reference) |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    args = ap.parse_args()
    runs = val_runs(args.root)
    best = max(runs, key=lambda r: (r["score"], r["closed"]))
    lines = ["| λ | R | K | val closed | val open recall | score |", "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["lam"], r["R"], r["K"])):
        mark = " **chosen**" if r is best else ""
        lines.append(f"| {r['lam']:g} | {r['R']} | {r['K']} | {100 * r['closed']:.1f} | {100 * r['open']:.1f} "
                     f"| {100 * r['score']:.1f}{mark} |")
    lines += reference_runs(args.root)
    (args.root / "selection.md").write_text("\n".join(lines) + "\n")
    print(best["args"])


if __name__ == "__main__":
    main()
