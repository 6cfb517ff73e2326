"""Scoring a run directory from its predictions (no model needed): ``results.json``.

Predictions are joined to the task's samples by id. VQA tasks get the ``llava_med`` protocol
plus the attention metrics (Coverage/Intensity and the raw RoI share ``roi_mass``, ``roi_lift``,
``attention_peak``) for samples with an RoI and a captured attention map; report tasks get
the ``coco`` lexical metrics plus the optional families configured in :class:`ReportOptions`
(BERTScore, the clinical metrics, ``report@medheval``). Every metric carries a
percentile-bootstrap 95 % CI.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench import attention_grid
from medbench.atomic import atomic_write_json
from medbench.errors import IncompleteRun
from medbench.geometry import roi_in_frame
from medbench.metrics import MetricUnavailable
from medbench.metrics import report as report_metrics
from medbench.metrics.attention import AttentionMetrics, geometry_resolution
from medbench.metrics.bertscore import BertScoreMetric
from medbench.metrics.clinical_client import PYTHON_ENV, ClinicalMetrics, ClinicalMetricsError
from medbench.metrics.mc import MCMetrics
from medbench.metrics.medheval import MedHEvalReportMetrics
from medbench.metrics.vqa import VQAMetrics
from medbench.predictions import read_rows
from medbench.provenance import git_info, versions
from medbench.registry import open_task
from medbench.schema import SCHEMA_VERSION
from medbench.selection import select_samples
from medbench.types import Sample

log = logging.getLogger("medbench")


def latest_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per id: the last successful row, else the last error row."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        prev = out.get(row["id"])
        if prev is None or not row.get("error") or prev.get("error"):
            out[row["id"]] = row
    return out


def _result_entries(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    metrics, cis, per_sample = {}, {}, {}
    for name, res in results.items():
        metrics[name] = res.value
        cis[name] = res.ci
        if res.per_sample is not None:
            per_sample[name] = res.per_sample
    return metrics, cis, per_sample


def score_vqa(rows: list[dict[str, Any]], samples: dict[str, Sample], geometry: dict[str, Any],
              seed: int) -> tuple[dict, dict, dict, dict]:
    vqa = VQAMetrics("llava_med", seed=seed).compute(rows)
    metrics, cis, per_sample = _result_entries(vqa)
    counts: dict[str, int] = {}
    attn_rows = []
    for row in rows:
        sample = samples[row["id"]]
        attn = row.get("attention")
        if row.get("error") or sample.roi is None or not attn:
            continue
        grid = attention_grid.decode(attn)
        mask = roi_in_frame(sample.roi, tuple(attn["image_size"]), geometry)
        attn_rows.append({"id": row["id"], "attention_grid": grid, "roi_mask": mask})
    counts["with_roi"] = sum(1 for r in rows if samples[r["id"]].roi is not None)
    counts["with_attention"] = len(attn_rows)
    if attn_rows:
        attention = attention_metrics(geometry, seed).compute(attn_rows)
        m, c, p = _result_entries(attention)
        metrics.update(m)
        cis.update(c)
        per_sample.update(p)
        for res in attention.values():
            for key, value in res.counts.items():
                counts[f"attention_{key}"] = value
    for res in vqa.values():
        for key in ("open", "closed"):
            if key in res.counts:
                counts[key] = res.counts[key]
    return metrics, cis, per_sample, counts


def attention_metrics(geometry: Mapping[str, Any], seed: int) -> AttentionMetrics:
    """The attention metrics of a run, at its grid and frame."""
    return AttentionMetrics(seed=seed, **geometry_resolution(geometry))


def scored_attention_protocol(run_info: Mapping[str, Any]) -> str | None:
    """The attention protocol :func:`score_vqa` scores a run with (``None`` when it captured none).

    Rebuilt from the run's geometry, so a run recorded before the protocol named its resolution
    gets the grid and frame too.
    """
    recorded = run_info.get("attention_protocol")
    if not recorded or not run_info.get("geometry"):
        return recorded
    return attention_metrics(run_info["geometry"], 0).protocol


def score_mc(rows: list[dict[str, Any]], samples: dict[str, Sample], seed: int) -> tuple[dict, dict, dict, dict]:
    mc_rows = [{**r, "options": samples[r["id"]].meta.get("options")} for r in rows]
    results = MCMetrics(seed=seed).compute(mc_rows)
    metrics, cis, per_sample = _result_entries(results)
    # multiple-choice questions are counted as such, never as closed (yes/no) ones
    return metrics, cis, per_sample, {"mc": results["closed_accuracy"].counts["mc"]}


@dataclass(frozen=True)
class ReportOptions:
    """Optional report metrics for :func:`score_run` (all off unless configured).

    ``bertscore_model``: a local model directory (roberta-large for real use) or
    ``"minilm-l6-local"`` (tests; labelled not comparable). ``clinical_python``: the clinical
    environment's interpreter (else ``MEDBENCH_CLINICAL_PYTHON``); ``models_root``: its weights
    (else ``MEDBENCH_MODELS``). ``medheval``: also compute the ``report@medheval`` protocol.
    """

    bertscore_model: str | None = None
    bertscore_baseline: str | None = None
    bertscore_device: str | None = None
    clinical_python: str | None = None
    models_root: str | None = None
    clinical_metrics: tuple[str, ...] | None = None
    medheval: bool = False


def _add_family(name: str, build: Callable[[], Any], rows: list[dict[str, Any]],
                out: tuple[dict, dict, dict, dict], unavailable: dict[str, str], details: dict[str, Any],
                expected: tuple[type[Exception], ...] = ()) -> None:
    """Compute one optional metric family into ``out``; a failure is recorded, never raised."""
    metrics, cis, per_sample, counts = out
    try:
        family = build()
        results = family.compute(rows)
        details[name] = family.details()
    except (MetricUnavailable, *expected) as exc:
        log.warning("%s unavailable: %s", name, exc)
        unavailable[name] = str(exc)
        return
    m, c, p = _result_entries(results)
    metrics.update(m)
    cis.update(c)
    per_sample.update(p)
    first = next(iter(results.values()), None)
    if first is not None and "n_empty" in first.counts:
        counts[f"{name}_empty"] = first.counts["n_empty"]


def score_report(rows: list[dict[str, Any]], seed: int, bertscore_model: str | None = None,
                 clinical_python: str | None = None, *, bertscore_baseline: str | None = None,
                 bertscore_device: str | None = None, models_root: str | None = None,
                 clinical_metrics: tuple[str, ...] | None = None,
                 medheval: bool = False,
                 task_families: Mapping[str, Callable[[int], Any]] | None = None) -> tuple[dict, dict, dict, dict]:
    """Lexical ``coco`` metrics plus the configured optional families (BERTScore, clinical, medheval)
    and the task's own (``task_families``: name → factory(seed), e.g. phantom's Finding-F1).

    A family that cannot run leaves the others intact; its reason goes to ``counts["unavailable"]``
    and each family's protocol/version record to ``counts["metric_details"]`` (both dicts, which
    :func:`score_run` moves out of ``counts``).
    """
    unavailable: dict[str, str] = {}
    details: dict[str, Any] = {}
    try:
        metrics, cis, per_sample = _result_entries(report_metrics.ReportMetrics(seed=seed).compute(rows))
        counts: dict[str, Any] = {"report": len(rows)}
    except MetricUnavailable as exc:
        log.error("report metrics unavailable: %s", exc)
        metrics, cis, per_sample = {k: None for k in report_metrics.REPORT_KEYS}, {k: None for k in report_metrics.REPORT_KEYS}, {}
        counts = {"report_metrics_unavailable": 1}
        unavailable["coco"] = str(exc)
    out = (metrics, cis, per_sample, counts)
    if bertscore_model:
        _add_family("bertscore", lambda: BertScoreMetric(bertscore_model, baseline_path=bertscore_baseline,
                                                         device=bertscore_device, seed=seed),
                    rows, out, unavailable, details)
    else:
        unavailable["bertscore"] = "no BERTScore model configured (a local roberta-large directory)"
    if clinical_python or os.environ.get(PYTHON_ENV):
        kwargs = {"metrics": clinical_metrics} if clinical_metrics else {}
        _add_family("clinical", lambda: ClinicalMetrics(clinical_python=clinical_python, models_root=models_root,
                                                        seed=seed, **kwargs),
                    rows, out, unavailable, details, (ClinicalMetricsError,))
    else:
        unavailable["clinical"] = ("no clinical environment configured (`medbench setup-clinical`, then "
                                   f"clinical_python or {PYTHON_ENV})")
    if medheval:
        _add_family("medheval", lambda: MedHEvalReportMetrics(seed=seed), rows, out, unavailable, details)
    for family, factory in (task_families or {}).items():
        _add_family(family, lambda f=factory: f(seed), rows, out, unavailable, details, (Exception,))
    counts["unavailable"] = unavailable
    counts["metric_details"] = details
    return out


def data_record(task: Any) -> dict[str, Any]:
    """Dataset provenance a loader recorded (source format, split origin, count checks)."""
    record: dict[str, Any] = {}
    for attr in ("provenance", "count_checks", "source_format"):
        value = getattr(task, attr, None)
        if value:
            record[attr] = value
    return json.loads(json.dumps(record, default=str))


def training_label_quality(checkpoint: str | None, split: str | None) -> dict[str, Any] | None:
    """Token-level quality of the tuning run's training labels against GT RoIs (A³TUNE spec §1.6).

    Read from the adapter's ``training.json`` (``weak_label_quality``, written where the task has
    GT RoIs), with the label source; None when the checkpoint has none.
    """
    if not checkpoint:
        return None
    path = Path(checkpoint) / "training.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    quality = record.get("weak_label_quality")
    if not isinstance(quality, dict) or not quality.get("n_gt"):
        return None
    labels = record.get("labels") or {}
    return {"split": split, "source": labels.get("source"), "label_fp": labels.get("label_fp"), **quality}


def score_run(run_dir: str | Path, *, samples: list[Sample] | None = None, task: Any = None,
              extra: dict[str, Any] | None = None,
              report_options: ReportOptions | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score ``run_dir`` and write ``results.json`` (atomically) and ``per_sample.json``.

    ``report_options`` (a :class:`ReportOptions` or a mapping of its fields) configures the
    optional report metrics; it is ignored for VQA tasks.
    """
    if report_options is not None and not isinstance(report_options, ReportOptions):
        report_options = ReportOptions(**dict(report_options))
    run_dir = Path(run_dir)
    run_info = json.loads((run_dir / "run.json").read_text())
    config = run_info["config"]
    if task is None:
        task = open_task(config["task"], config.get("data_root"), run_info.get("task_version"),
                         image_root=config.get("image_root"))
    if samples is None:
        samples = select_samples(task, config.get("limit") or None, config.get("split"))  # old run.json: 0 = all
    header, raw_rows = read_rows(run_dir / "predictions.jsonl")
    if header.get("fingerprint") != run_info["fingerprint"]:
        raise IncompleteRun(f"{run_dir}: predictions and run.json disagree on the fingerprint")
    by_id = latest_rows(raw_rows)
    planned = {s.id: s for s in samples}
    missing = [i for i in planned if i not in by_id]
    if missing:
        raise IncompleteRun(f"{run_dir}: {len(missing)} of {len(planned)} planned samples have no prediction "
                            f"(e.g. {missing[:3]}); rerun `medbench run` with the same options to finish it")
    rows = [by_id[i] for i in sorted(planned)]
    failed = [r for r in rows if r.get("error")]
    seed = int(config.get("seed", 0))
    if task.kind == "report":
        opts = dataclasses.asdict(report_options or ReportOptions())
        metrics, cis, per_sample, counts = score_report(rows, seed, task_families=getattr(task, "metric_families", dict)(), **opts)
    elif task.metric_protocol == "mc@difflib":
        metrics, cis, per_sample, counts = score_mc(rows, planned, seed)
    else:
        metrics, cis, per_sample, counts = score_vqa(rows, planned, run_info["geometry"], seed)
    unavailable, metric_details = counts.pop("unavailable", None), counts.pop("metric_details", None)
    extra = dict(extra or {})
    previous = {}
    if (run_dir / "results.json").exists():
        previous = json.loads((run_dir / "results.json").read_text())
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task": task.name,
        "task_version": task.version,
        "model": Path(config["model"]).name if Path(config["model"]).is_dir() else config["model"],
        "tuning": run_info["tuning"],
        "decoding": run_info["decoding"],
        "method_args": run_info["method_args"],
        "metric_protocol": task.metric_protocol,
        "attention_protocol": scored_attention_protocol(run_info) if task.kind == "vqa" else None,
        "metrics": metrics,
        "confidence_intervals": cis,
        "counts": {
            "planned": len(planned), "scored": len(rows) - len(failed), "failed": len(failed),
            "not_in_selection": len(set(by_id) - set(planned)),
            "guard_steps": int(sum(int(r.get("guards") or 0) for r in rows)),
            "guarded_samples": sum(1 for r in rows if r.get("guards")),
            "skipped_records": len(extra.get("skipped", previous.get("skipped", []))),
            **counts,
        },
        **({"unavailable": unavailable, "metric_details": metric_details} if task.kind == "report" else {}),
        "skipped": extra.get("skipped", previous.get("skipped", [])),
        "data": extra.get("data", previous.get("data", data_record(task))),
        "limit": config.get("limit"),
        "split": config.get("split") or getattr(task, "eval_split", None),  # checked when the run was planned
        "fingerprint": run_info["fingerprint"],
        "seed": seed,
        "versions": versions(),
        "git": git_info(),
        "timing": extra.get("timing", previous.get("timing", {})),
        "run_dir": str(run_dir),
    }
    quality = training_label_quality(run_info.get("tuning_checkpoint"), getattr(task, "train_split", None))
    if quality is not None:
        results["weak_label_quality"] = quality
    results["timing"] = {**results["timing"], "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    atomic_write_json(run_dir / "per_sample.json", per_sample)
    atomic_write_json(run_dir / "results.json", results)
    return results
