"""Summarise the A³TUNE experiment: table.md (means over seeds, paired differences against LoRA),
paired.json and a PNG.

    python results/experiments/a3tune-v3/summarise.py RUNS_DIR OUT_DIR

Every run at seed s is compared with LoRA at the same seed through ``medbench.paired.paired_compare``
(the code behind ``medbench compare --paired``; per-sample bootstrap CI of B − A, McNemar's exact p
for closed accuracy), so each per-seed difference can be reproduced with
``medbench compare --paired RUNS/test/seed<s>/tiny-med-llava/phantom-vqa/lora+greedy <run>``.
The pooled difference averages each sample's difference over the seeds and bootstraps sample ids
(10,000 resamples, seed 0): the CI covers sample noise and, through the average, training noise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

import numpy as np

from medbench.paired import load_run, paired_compare

METRICS = ["closed_accuracy", "open_recall", "coverage", "intensity", "roi_mass", "roi_lift"]
PERCENT = {"closed_accuracy", "open_recall"}
ORDER = ["lora", "a3moe", "a3tune-weak", "a3tune-gt", "a3tune-random"]
LABELS = {"lora": "LoRA", "a3moe": "A³MoE only (λ=0)", "a3tune-weak": "A³TUNE, weak labels",
          "a3tune-gt": "A³TUNE, GT RoIs", "a3tune-random": "A³TUNE, random labels"}


def condition(run: Path) -> tuple[str, dict]:
    """The experiment arm of a run and the resolved A³TUNE settings (λ, R, K) of its adapter."""
    results = json.loads((run / "results.json").read_text())
    if results["tuning"] == "lora":
        return "lora", {}
    info = json.loads((run / "run.json").read_text())
    resolved = json.loads((Path(info["tuning_checkpoint"]) / "training.json").read_text())["resolved"]
    settings = {"lam": resolved["lam"], "R": resolved["top_heads"], "K": resolved["top_k"]}
    if resolved["lam"] == 0:
        return "a3moe", settings
    return f"a3tune-{results['method_args']['tuning'].get('labels') or 'weak'}", settings


def find_runs(root: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for results in sorted(root.glob("test/seed*/*/phantom-vqa/*/results.json")):
        seed = int(results.parts[-5].removeprefix("seed"))
        arm, _ = condition(results.parent)
        if seed in found.get(arm, {}):
            raise SystemExit(f"two {arm} runs at seed {seed}: {found[arm][seed]} and {results.parent}")
        found.setdefault(arm, {})[seed] = results.parent
    return found


def pooled_diff(base: dict[int, Path], other: dict[int, Path], metric: str, n_resamples: int = 10_000
                ) -> dict[str, float] | None:
    """Mean over samples of (mean over seeds of B − A), with a paired bootstrap CI over sample ids."""
    seeds = sorted(set(base) & set(other))
    per_seed = []
    for s in seeds:
        a, b = load_run(base[s]).per_sample.get(metric), load_run(other[s]).per_sample.get(metric)
        if not a or not b:
            return None
        per_seed.append((a, b))
    ids = sorted(set.intersection(*(set(a) & set(b) for a, b in per_seed)))
    d = np.array([mean(b[i] - a[i] for a, b in per_seed) for i in ids])
    rng = np.random.default_rng(0)
    boots = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci": [float(lo), float(hi)], "n": len(ids), "seeds": seeds}


def fmt(metric: str, value: float, signed: bool = False) -> str:
    scale, places = (100, 1) if metric in PERCENT else (1, 3)
    return f"{scale * value:{'+' if signed else ''}.{places}f}"


def seed_mean(entry: dict, metric: str) -> str:
    return fmt(metric, mean(v["metrics"][metric] for v in entry["seeds"].values()))


def pooled_text(entry: dict, metric: str) -> str:
    p = entry["pooled_vs_lora"].get(metric)
    if not p:
        return "—"
    return f"{fmt(metric, p['diff'], True)} ({fmt(metric, p['ci'][0], True)}, {fmt(metric, p['ci'][1], True)})"


def main(root: Path, out: Path) -> None:
    found = find_runs(root)
    if "lora" not in found:
        raise SystemExit(f"no LoRA runs under {root}/test")
    repo = out.parent.parent.parent
    doc: dict[str, dict] = {}
    for arm in [a for a in ORDER if a in found]:
        doc[arm] = {"label": LABELS[arm], "seeds": {}, "pooled_vs_lora": {}}
        for seed, run in sorted(found[arm].items()):
            results = json.loads((run / "results.json").read_text())
            entry = {"metrics": {k: results["metrics"].get(k) for k in METRICS},
                     "ci": {k: results["confidence_intervals"].get(k) for k in METRICS},
                     "settings": condition(run)[1],
                     "weak_label_quality": {k: (results.get("weak_label_quality") or {}).get(k)
                                            for k in ("precision", "recall", "iou")},
                     "run": str(run.relative_to(repo)) if run.is_relative_to(repo) else str(run)}
            if arm != "lora" and seed in found["lora"]:
                cmp = paired_compare(found["lora"][seed], run, seed=0).to_json()["metrics"]
                entry["vs_lora"] = {k: cmp[k] for k in METRICS if k in cmp}
            doc[arm]["seeds"][str(seed)] = entry
        if arm != "lora":
            doc[arm]["pooled_vs_lora"] = {k: pooled_diff(found["lora"], found[arm], k) for k in METRICS}
    (out / "paired.json").write_text(json.dumps(doc, indent=1) + "\n")

    lines = ["| arm | seeds | closed % | Δ closed vs LoRA, pooled (95 % CI) | per seed Δ (McNemar p) | "
             "open recall % | Δ open recall, pooled (95 % CI) | coverage | intensity | roi_mass | roi_lift | "
             "Δ roi_lift, pooled (95 % CI) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, entry in doc.items():
        by_seed = entry["seeds"]
        seeds = sorted(by_seed, key=int)
        per_seed = "—" if arm == "lora" else "; ".join(
            f"{fmt('closed_accuracy', by_seed[s]['vs_lora']['closed_accuracy']['diff'], True)} "
            f"(p={by_seed[s]['vs_lora']['closed_accuracy']['mcnemar']['p']:.2g})" for s in seeds if "vs_lora" in by_seed[s])
        cells = [entry["label"], ",".join(seeds), seed_mean(entry, "closed_accuracy"),
                 pooled_text(entry, "closed_accuracy"), per_seed, seed_mean(entry, "open_recall"),
                 pooled_text(entry, "open_recall"),
                 *(seed_mean(entry, m) for m in ("coverage", "intensity", "roi_mass", "roi_lift")),
                 pooled_text(entry, "roi_lift")]
        lines.append("| " + " | ".join(cells) + " |")
    settings = next((e["seeds"][s]["settings"] for a, e in doc.items() if a.startswith("a3tune")
                     for s in e["seeds"]), {})
    quality = {a: doc[a]["seeds"][min(doc[a]["seeds"], key=int)]["weak_label_quality"]
               for a in ("a3tune-weak", "a3tune-random", "a3tune-gt") if a in doc}
    lines += ["", f"A³TUNE settings (chosen on val): λ={settings.get('lam')}, R={settings.get('R')} heads, "
              f"K={settings.get('K')} labels. Training labels against the GT RoIs (token level): " + "; ".join(
                  f"{LABELS[a]}: precision {q['precision']:.3f}, recall {q['recall']:.3f}, IoU {q['iou']:.3f}"
                  for a, q in quality.items() if q.get("iou") is not None) + "."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(doc, out)


def figure(doc: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: figure skipped")
        return
    arms = [a for a in doc if a != "lora"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, metric, title in zip(axes, ("closed_accuracy", "open_recall", "roi_lift"),
                                 ("Δ closed accuracy (points)", "Δ open recall (points)", "Δ roi_lift")):
        scale = 100 if metric in PERCENT else 1
        for i, arm in enumerate(arms):
            seeds = sorted(doc[arm]["seeds"], key=int)
            for j, s in enumerate(seeds):
                d = doc[arm]["seeds"][s].get("vs_lora", {}).get(metric)
                if d:
                    x = i + (j - (len(seeds) - 1) / 2) * 0.12
                    ax.errorbar(x, scale * d["diff"], yerr=[[scale * (d["diff"] - d["ci"][0])],
                                                            [scale * (d["ci"][1] - d["diff"])]],
                                fmt="o", ms=3, color=f"C{j}", alpha=0.6, capsize=2)
            p = doc[arm]["pooled_vs_lora"].get(metric)
            if p:
                ax.errorbar(i + 0.3, scale * p["diff"], yerr=[[scale * (p["diff"] - p["ci"][0])],
                                                              [scale * (p["ci"][1] - p["diff"])]],
                            fmt="D", color="black", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(arms)), [LABELS[a].replace(", ", "\n") for a in arms], fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle("phantom-vqa v3, tiny-med-llava v2: each arm − LoRA (dots: seeds 0–2, 95 % paired bootstrap CI; "
                 "◆ pooled over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "a3tune_vs_lora.png", dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
