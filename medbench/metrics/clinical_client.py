"""Clinical report metrics from the core process: a subprocess into the clinical environment.

f1chexbert and radgraph break on transformers 5, so CheXbert similarity, RadGraph F1 and
RaTEScore run in a separate environment (``medbench setup-clinical --venv DIR``) through
:mod:`medbench.metrics.clinical`, never imported with their packages here. The client writes the
pairs JSONL into a private temporary directory, runs the module with ``HF_HUB_OFFLINE=1`` and
``MEDBENCH_MODELS``, and merges the scores only when the process exited 0 and the output covers
every requested key for every id with finite values. Anything less fails as a whole: partial
output is never merged.

Result keys (DESIGN.md): ``chexbert`` (CheXbert [CLS] cosine), ``radgraph`` (RadGraph F1,
partial reward level), ``radgraph_simple``, ``radgraph_complete`` and ``ratescore``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from medbench.metrics import Metric, MetricResult, MetricUnavailable, preview_ids, scoreable_rows
from medbench.metrics.bootstrap import mean_and_ci
from medbench.metrics.clinical import (
    EXIT_BAD_INPUT,
    EXIT_UNAVAILABLE,
    FORMAT,
    LAYOUT,
    METRICS,
    MODELS_ENV,
    OUTPUT_KEYS,
    missing_files,
)

__all__ = [
    "CLINICAL_KEYS",
    "PYTHON_ENV",
    "ClinicalMetrics",
    "ClinicalMetricsError",
    "resolve_clinical_python",
    "resolve_models_root",
]

PYTHON_ENV = "MEDBENCH_CLINICAL_PYTHON"
RESULT_KEYS = {
    "chexbert_semb": "chexbert",
    "radgraph_partial": "radgraph",
    "radgraph_simple": "radgraph_simple",
    "radgraph_complete": "radgraph_complete",
    "ratescore": "ratescore",
}
CLINICAL_KEYS = tuple(RESULT_KEYS.values())
PROTOCOLS = {
    "chexbert_semb": "chexbert_semb@cxr-report-metric (f1chexbert 0.0.2, [CLS] cosine)",
    "radgraph_partial": "radgraph_f1_partial@radgraph-0.1.18 (model_type=radgraph)",
    "radgraph_simple": "radgraph_f1_simple@radgraph-0.1.18 (model_type=radgraph)",
    "radgraph_complete": "radgraph_f1_complete@radgraph-0.1.18 (model_type=radgraph)",
    "ratescore": "ratescore@0.6.0 (empty prediction = 0)",
}
_SETUP = "create it with `medbench setup-clinical --venv DIR`"


class ClinicalMetricsError(RuntimeError):
    """The clinical subprocess failed or wrote unusable output; nothing was merged."""


def resolve_clinical_python(clinical_python: str | os.PathLike[str] | None = None) -> str:
    """The clinical interpreter: ``clinical_python`` (config), else ``MEDBENCH_CLINICAL_PYTHON``."""
    value = str(clinical_python) if clinical_python else os.environ.get(PYTHON_ENV, "")
    if not value:
        raise MetricUnavailable(
            f"clinical metrics need their own environment: {_SETUP}, then set the config key "
            f"clinical_python (or {PYTHON_ENV}) to DIR/bin/python"
        )
    found = shutil.which(value) if os.sep not in value else (value if os.access(value, os.X_OK) else None)
    if not found or not Path(found).is_file():
        raise MetricUnavailable(f"clinical interpreter {value} does not exist or is not executable: {_SETUP}")
    return found


def resolve_models_root(models_root: str | os.PathLike[str] | None, metrics: Sequence[str]) -> Path:
    """The clinical models root (``models_root`` or ``MEDBENCH_MODELS``) with every file ``metrics`` need."""
    value = str(models_root) if models_root else os.environ.get(MODELS_ENV, "")
    layout = "; ".join(f"{m}: {', '.join(LAYOUT[m])}" for m in metrics)
    if not value:
        raise MetricUnavailable(f"clinical metrics need a models root: set {MODELS_ENV}=DIR holding {layout}")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise MetricUnavailable(f"clinical models root {root} is not a directory; it must hold {layout}")
    missing = missing_files(root, metrics)
    if missing:
        raise MetricUnavailable(
            f"clinical weights missing under {root}: place {', '.join(missing)} there "
            "(hf/ is a Hugging Face hub cache; chexbert.pth and the RadGraph archive come from "
            "StanfordAIMI/RRG_scorers, the RaTEScore models from Angelakeke/RaTE-NER-Deberta and "
            "FremyCompany/BioLORD-2023-C)"
        )
    return root


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class ClinicalMetrics(Metric):
    """CheXbert similarity, RadGraph F1 and RaTEScore over rows with ``id``, ``prediction``, ``answer``."""

    name: ClassVar[str] = "clinical"

    def __init__(
        self,
        *,
        clinical_python: str | os.PathLike[str] | None = None,
        models_root: str | os.PathLike[str] | None = None,
        metrics: Sequence[str] = METRICS,
        device: str = "cpu",
        timeout: float | None = None,
        seed: int = 0,
        n_resamples: int = 1000,
        level: float = 0.95,
    ) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"unknown clinical metric(s) {unknown or 'none given'}; choose from {METRICS}")
        self.protocol = "clinical"
        self.metrics = tuple(dict.fromkeys(metrics))
        self.python = resolve_clinical_python(clinical_python)
        self.root = resolve_models_root(models_root, self.metrics)
        self.device = device
        self.timeout = timeout
        self.seed = seed
        self.n_resamples = n_resamples
        self.level = level
        self.versions: dict[str, Any] = {}

    def details(self) -> dict[str, Any]:
        """Protocols and clinical-environment package versions (after :meth:`compute`)."""
        keys = [k for m in self.metrics for k in OUTPUT_KEYS[m]]
        return {
            "protocols": {RESULT_KEYS[k]: PROTOCOLS[k] for k in keys},
            "versions": dict(self.versions),
            "device": self.device,
        }

    def run_subprocess(self, pairs: list[dict[str, str]]) -> dict[str, Any]:
        """Run the clinical module on ``pairs``; its validated output, or an exception."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", MODELS_ENV: str(self.root)})
        with tempfile.TemporaryDirectory(prefix="medbench-clinical-") as tmp:
            inp, out = Path(tmp) / "pairs.jsonl", Path(tmp) / "scores.json"
            with open(inp, "w", encoding="utf-8") as fh:
                for pair in pairs:
                    fh.write(json.dumps(pair) + "\n")
            cmd = [self.python, "-m", "medbench.metrics.clinical", "--in", str(inp), "--out", str(out),
                   "--metrics", ",".join(self.metrics), "--device", self.device]
            try:
                proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True,
                                      timeout=self.timeout, check=False)
            except OSError as exc:
                raise MetricUnavailable(f"cannot run the clinical interpreter {self.python}: {exc}") from exc
            except subprocess.TimeoutExpired as exc:
                raise ClinicalMetricsError(f"clinical metrics timed out after {self.timeout} s; nothing merged") from exc
            stderr = _tail(proc.stderr or "")
            if proc.returncode == EXIT_UNAVAILABLE:
                raise MetricUnavailable(f"clinical metrics unavailable: {stderr}")
            if proc.returncode == 1 and "No module named medbench" in stderr:
                raise MetricUnavailable(f"medbench is not installed in the clinical environment {self.python}: {_SETUP}")
            if proc.returncode == EXIT_BAD_INPUT:
                raise ClinicalMetricsError(f"clinical metrics rejected the input: {stderr}")
            if proc.returncode != 0:
                raise ClinicalMetricsError(
                    f"clinical metrics failed (exit {proc.returncode}); nothing merged:\n{stderr}"
                )
            try:
                data = json.loads(out.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ClinicalMetricsError(f"clinical metrics exited 0 but wrote no readable {out.name}: {exc}") from exc
        return self._validate(data, [p["id"] for p in pairs])

    def _validate(self, data: Any, ids: list[str]) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise ClinicalMetricsError("clinical output has no 'metrics' mapping; nothing merged")
        if data.get("format") != FORMAT:
            raise MetricUnavailable(
                f"clinical output format {data.get('format')!r} != {FORMAT}: the clinical environment runs "
                f"another medbench version; re-run `medbench setup-clinical`"
            )
        want = set(ids)
        for metric in self.metrics:
            for key in OUTPUT_KEYS[metric]:
                entry = data["metrics"].get(key)
                per_sample = entry.get("per_sample") if isinstance(entry, dict) else None
                if not isinstance(per_sample, dict):
                    raise ClinicalMetricsError(f"clinical output lacks {key}; nothing merged")
                if set(per_sample) != want:
                    gap = (want - set(per_sample)) | (set(per_sample) - want)
                    raise ClinicalMetricsError(f"{key}: output ids differ from the input ({preview_ids(gap)}); nothing merged")
                bad = [i for i, v in per_sample.items()
                       if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
                if bad:
                    raise ClinicalMetricsError(f"{key}: non-numeric or non-finite scores ({preview_ids(bad)}); nothing merged")
        return data

    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        ok, n_errors = scoreable_rows(rows)
        pairs = [{"id": r["id"], "ref": str(r.get("answer") or ""), "hyp": str(r.get("prediction") or "")} for r in ok]
        blank = [p["id"] for p in pairs if not p["ref"].strip()]
        if blank:
            raise ValueError(f"empty reference report(s): {preview_ids(blank)}")
        counts = {"n_rows": len(ok) + n_errors, "errors": n_errors,
                  "n_empty": sum(1 for p in pairs if not p["hyp"].strip())}
        keys = [k for m in self.metrics for k in OUTPUT_KEYS[m]]
        if not pairs:
            return {RESULT_KEYS[k]: MetricResult(RESULT_KEYS[k], None, {}, 0, protocol=PROTOCOLS[k], counts=counts)
                    for k in keys}
        data = self.run_subprocess(pairs)
        self.versions = dict(data.get("versions") or {})
        results = {}
        for key in keys:
            per_sample = data["metrics"][key]["per_sample"]
            values = [float(per_sample[r["id"]]) for r in ok]
            value, ci = mean_and_ci(values, n_resamples=self.n_resamples, seed=self.seed, level=self.level)
            name = RESULT_KEYS[key]
            results[name] = MetricResult(
                name=name,
                value=value,
                per_sample={r["id"]: v for r, v in zip(ok, values)},
                n=len(ok),
                protocol=PROTOCOLS[key],
                ci=ci,
                counts=dict(counts),
            )
        return results
