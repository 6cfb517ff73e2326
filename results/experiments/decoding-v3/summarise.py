"""Summarise the decoding experiment: one markdown table per tuning (base model, LoRA; means over
seeds, 95 % CIs, paired differences against greedy with their bootstrap CIs and McNemar's exact p),
paired.json and a PNG.

    python results/experiments/decoding-v3/summarise.py RUNS_DIR OUT_DIR

Every run is compared with greedy of the same tuning through ``medbench.paired.paired_compare`` (the
code behind ``medbench compare --paired``): at the same seed where greedy ran at that seed (LoRA:
the seed also trains the adapter), else greedy at seed 0 (the base model's greedy does not depend on
the seed). Each difference can be reproduced with
``medbench compare --paired RUNS/seed<s>/<model>/phantom-vqa/<tuning>+greedy RUNS/seed<s>/<model>/phantom-vqa/<tuning>+<method>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

from medbench.paired import paired_compare

ORDER = ["greedy", "beam", "nucleus", "vcd", "dola", "opera", "avisc", "m3id", "damro", "pai", "controlmllm"]
METRICS = ["closed_accuracy", "open_recall", "coverage", "roi_mass", "roi_lift"]


TUNINGS = {"none": "base model", "lora": "LoRA"}


def runs(root: Path) -> dict[str, dict[str, dict[int, Path]]]:
    """tuning → decoding method → seed → run directory."""
    found: dict[str, dict[str, dict[int, Path]]] = {}
    for results in sorted(root.glob("seed*/*/phantom-vqa/*+*/results.json")):
        seed = int(results.parts[-5].removeprefix("seed"))
        tuning, method = results.parent.name.split("+", 1)
        if tuning in TUNINGS:
            found.setdefault(tuning, {}).setdefault(method, {})[seed] = results.parent
    return found


def main(root: Path, out: Path) -> None:
    found = runs(root)
    docs = {tuning: summarise(found[tuning], out) for tuning in TUNINGS if tuning in found}
    (out / "paired.json").write_text(json.dumps(docs, indent=1) + "\n")
    parts = []
    for tuning, doc in docs.items():
        parts += [f"## {TUNINGS[tuning]}", "", *table(doc), ""]
    (out / "table.md").write_text("\n".join(parts))
    print("\n".join(parts))
    figure(docs, out)


def summarise(found: dict[str, dict[int, Path]], out: Path) -> dict[str, dict]:
    doc: dict[str, dict] = {}
    for method in [m for m in ORDER if m in found]:
        doc[method] = {}
        for seed, run in sorted(found[method].items()):
            greedy = found["greedy"].get(seed, found["greedy"][0])
            metrics = json.loads((run / "results.json").read_text())
            entry = {"metrics": {k: metrics["metrics"].get(k) for k in METRICS},
                     "ci": {k: metrics["confidence_intervals"].get(k) for k in METRICS},
                     "run": str(run.relative_to(out.parent.parent.parent)) if run.is_relative_to(out.parent.parent.parent) else str(run)}
            if method != "greedy":
                cmp = paired_compare(greedy, run, seed=0).to_json()["metrics"]
                entry["vs_greedy"] = {k: cmp[k] for k in METRICS if k in cmp}
            doc[method][str(seed)] = entry
    return doc


def table(doc: dict[str, dict]) -> list[str]:
    lines = ["| method | seeds | closed % (95 % CI, seed 0) | Δ closed vs greedy (95 % CI; McNemar p) | open recall % | "
             "Δ open recall | coverage | roi_lift |", "|---|---|---|---|---|---|---|---|"]
    for method, by_seed in doc.items():
        seeds = sorted(by_seed, key=int)
        first = by_seed[seeds[0]]
        closed = mean(by_seed[s]["metrics"]["closed_accuracy"] for s in seeds)
        ci = first["ci"]["closed_accuracy"]
        row = [method, ",".join(seeds), f"{100 * closed:.1f} ({100 * ci['low']:.1f}–{100 * ci['high']:.1f})"]
        if method == "greedy":
            row += ["—"]
        else:
            diffs = [by_seed[s]["vs_greedy"]["closed_accuracy"] for s in seeds]
            row += ["; ".join(f"{100 * d['diff']:+.1f} ({100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}; "
                              f"p={d['mcnemar']['p']:.2g})" for d in diffs)]
        row += [f"{100 * mean(by_seed[s]['metrics']['open_recall'] for s in seeds):.1f}"]
        row += ["—" if method == "greedy" else "; ".join(
            f"{100 * by_seed[s]['vs_greedy']['open_recall']['diff']:+.1f}" for s in seeds)]
        row += [f"{mean(by_seed[s]['metrics']['coverage'] for s in seeds):.3f}",
                f"{mean(by_seed[s]['metrics']['roi_lift'] for s in seeds):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def figure(docs: dict[str, dict], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: figure skipped")
        return
    fig, axes = plt.subplots(1, len(docs), figsize=(8 * len(docs), 3.6), squeeze=False)
    for ax, (tuning, doc) in zip(axes[0], docs.items()):
        panel(ax, doc, TUNINGS[tuning])
    fig.tight_layout()
    fig.savefig(out / "closed_vs_greedy.png", dpi=120)


def panel(ax, doc: dict[str, dict], title: str) -> None:
    names = [m for m in doc if m != "greedy"]
    for i, method in enumerate(names):
        for j, s in enumerate(sorted(doc[method], key=int)):
            d = doc[method][s]["vs_greedy"]["closed_accuracy"]
            x = i + (j - 1) * 0.15 if len(doc[method]) > 1 else i
            ax.errorbar(x, 100 * d["diff"], yerr=[[100 * (d["diff"] - d["ci"][0])], [100 * (d["ci"][1] - d["diff"])]],
                        fmt="o", color="C0" if len(doc[method]) == 1 else f"C{j + 1}", capsize=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.set_ylabel("Δ closed accuracy vs greedy (points)")
    ax.set_title(f"phantom-vqa v3, tiny-med-llava v2, {title}: paired difference vs greedy, 95 % bootstrap CI "
                 "(one dot per seed)")
    ax.title.set_fontsize(9)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
