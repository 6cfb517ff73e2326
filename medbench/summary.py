"""The summary table printed after ``medbench run`` and ``medbench score``."""

from __future__ import annotations

from typing import Any

PERCENT = {"closed_accuracy", "open_recall", "open_precision", "open_f1", "open_em", "bleu1", "bleu2", "bleu3",
           "bleu4", "rouge_l", "meteor", "cider", "bertscore", "chexbert", "radgraph", "ratescore"}


def fmt_value(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.2f}" if name in PERCENT else f"{value:.3f}"


def summary_table(results: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = []
    cis = results.get("confidence_intervals", {})
    for name, value in results.get("metrics", {}).items():
        ci = cis.get(name) or {}
        lo, hi = ci.get("low"), ci.get("high")
        ci_txt = f"[{fmt_value(name, lo)}, {fmt_value(name, hi)}]" if lo is not None else ""
        rows.append([name, fmt_value(name, value), ci_txt])
    counts = results.get("counts", {})
    head = (f"{results.get('model')} · {results.get('task')} · {results.get('tuning')}+{results.get('decoding')}"
            f" · protocol {results.get('metric_protocol')}"
            + (f" · limit {results['limit']}" if results.get("limit") else ""))
    count_txt = ", ".join(f"{k}={v}" for k, v in counts.items())
    table = tabulate(rows, headers=["metric", "value", "95% CI"], tablefmt="github")
    quality = results.get("weak_label_quality")
    label_txt = ""
    if quality:
        label_txt = (f"\n{quality.get('source') or 'training'} labels vs GT RoIs ({quality.get('split')}, token level): "
                     f"precision {quality['precision']:.3f} · recall {quality['recall']:.3f} · IoU {quality['iou']:.3f}"
                     f" · n={quality['n']}/{quality['n_gt']}")
    return f"{head}\n{table}\ncounts: {count_txt}{label_txt}\nresults: {results.get('run_dir')}/results.json"
