"""Clinical report metrics, run INSIDE the separate clinical environment (spec §6-7).

``<clinical-python> -m medbench.metrics.clinical --in pairs.jsonl --out scores.json
--metrics chexbert_semb,radgraph,ratescore``

This module imports only the standard library at import time, so the core process may import it
for its constants; the clinical packages (f1chexbert 0.0.2, radgraph 0.1.18, ratescore 0.6.0 on
transformers < 5) are imported inside the scorer functions, in the clinical environment only.

* Input rows: ``{"id", "ref", "hyp"}``. Output (written atomically): ``format``, package
  ``versions``, per output key ``{"aggregate", "per_sample": {id: value}}``, ``n`` and ``n_empty``.
* ``MEDBENCH_MODELS`` names the models root: ``chexbert/chexbert.pth``, ``hf/`` (the Hugging Face
  hub cache, with bert-base-uncased's config.json, vocab.txt and tokenizer_config.json and the
  tokenizers named by RadGraph's config), ``radgraph/radgraph/`` (config.json, vocabulary/,
  weights.th), ``RaTE-NER-Deberta/`` and ``BioLORD-2023-C/``. Nothing is downloaded:
  ``HF_HUB_OFFLINE=1`` is set and the hub cache is pointed at ``hf/``.
* ``chexbert_semb``: cosine of CheXbert's final-layer [CLS] states (CXR-Report-Metric
  ``semb_score``). ``radgraph``: F1RadGraph ``reward_level="all"``, ``model_type="radgraph"``,
  giving ``radgraph_simple``, ``radgraph_partial`` (headline) and ``radgraph_complete``.
  ``ratescore``: RaTEScore on CPU unless ``--device cuda``.
* Empty predictions score 0 for every metric without calling the scorers (RaTEScore would drop
  them and shift later scores) and are counted in ``n_empty``.
* Exit status: 0 written; 2 bad input; 3 unavailable (missing package or weights, or a weight
  file that is not what the metric loads, such as a ``chexbert.pth`` without CheXbert's
  ``model_state_dict``; the message names the file and says what to place where); anything else
  is a crash. No output file unless everything worked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_UNAVAILABLE",
    "FORMAT",
    "METRICS",
    "OUTPUT_KEYS",
    "SCORERS",
    "main",
    "missing_files",
]

FORMAT = 1
METRICS = ("chexbert_semb", "radgraph", "ratescore")
OUTPUT_KEYS = {
    "chexbert_semb": ("chexbert_semb",),
    "radgraph": ("radgraph_simple", "radgraph_partial", "radgraph_complete"),
    "ratescore": ("ratescore",),
}
LAYOUT = {
    "chexbert_semb": (
        "chexbert/chexbert.pth",
        "hf/models--bert-base-uncased/",
    ),
    "radgraph": (
        "radgraph/radgraph/config.json",
        "radgraph/radgraph/vocabulary/",
        "radgraph/radgraph/weights.th",
    ),
    "ratescore": ("RaTE-NER-Deberta/config.json", "BioLORD-2023-C/config.json"),
}
PACKAGES = ("f1chexbert", "radgraph", "ratescore", "medspacy", "transformers", "torch", "scikit-learn",
            "numpy", "pandas")
MODELS_ENV = "MEDBENCH_MODELS"
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3

Scorer = Callable[[list[str], list[str], Path, str], dict[str, list[float]]]


class Unavailable(Exception):
    """A package or weight file is missing; the message says what to install or place where."""


class BadInput(Exception):
    """The pairs file is malformed."""


def _radgraph_hub_ids(root: Path) -> list[str]:
    config_path = root / "radgraph" / "radgraph" / "config.json"
    if not config_path.is_file():
        return []
    config = json.loads(config_path.read_text())
    names = [
        config.get("dataset_reader", {}).get("token_indexers", {}).get("bert", {}).get("model_name"),
        config.get("model", {}).get("embedder", {}).get("token_embedders", {}).get("bert", {}).get("model_name"),
    ]
    return sorted({n for n in names if n})


def missing_files(root: Path, metrics: Sequence[str]) -> list[str]:
    """Paths (relative to the models root) that ``metrics`` need and that are not there."""
    missing = []
    for metric in metrics:
        for rel in LAYOUT[metric]:
            path = root / rel
            if not (path.is_dir() if rel.endswith("/") else path.is_file()):
                missing.append(rel)
        if metric == "radgraph":
            for name in _radgraph_hub_ids(root):
                if not Path(name).is_dir() and not (root / "hf" / f"models--{name.replace('/', '--')}").is_dir():
                    missing.append(f"hf/models--{name.replace('/', '--')}/ (tokenizer named in radgraph config.json)")
    return missing


def models_root() -> Path:
    """The models root from ``MEDBENCH_MODELS``, checked to be a directory."""
    value = os.environ.get(MODELS_ENV)
    if not value:
        raise Unavailable(f"{MODELS_ENV} is not set: it must name the clinical models root")
    root = Path(value)
    if not root.is_dir():
        raise Unavailable(f"{MODELS_ENV}={root} is not a directory")
    return root


def _silence_loguru() -> None:
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()


class BadWeights(Exception):
    """A weight file is present but is not what the metric loads; the message names it."""


def _chexbert_state_keys(path: Path) -> set[str]:
    """Parameter names in ``chexbert.pth`` (``module.`` stripped), read with ``weights_only=True``."""
    import pickle
    import zipfile

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadWeights(f"{path}: not readable as a PyTorch checkpoint with weights_only=True ({first}); expected "
                         "CheXbert's chexbert.pth (a dict with model_state_dict)") from None
    state = checkpoint.get("model_state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise BadWeights(f"{path}: expected CheXbert's chexbert.pth, a dict whose model_state_dict maps parameter "
                         f"names to tensors; found {found}")
    return {k.replace("module.", "") for k in state}


def score_chexbert_semb(refs: list[str], hyps: list[str], root: Path, device: str) -> dict[str, list[float]]:
    """Cosine of CheXbert final-layer [CLS] hidden states, per pair."""
    import f1chexbert.f1chexbert as fcb
    import pandas as pd
    import torch

    fcb.CACHE_DIR = str(root / "chexbert")
    expected = _chexbert_state_keys(root / "chexbert" / "chexbert.pth")
    scorer = fcb.F1CheXbert(device=device)
    missing = sorted(set(scorer.model.state_dict()) - expected)
    if missing:  # f1chexbert loads with strict=False: a mismatched file would silently leave random weights
        raise BadWeights(f"{root / 'chexbert' / 'chexbert.pth'}: {len(missing)} CheXbert parameters are not in its "
                         f"model_state_dict (first: {missing[0]}); expected CheXbert's chexbert.pth for the BERT "
                         "config in hf/models--bert-base-uncased")
    bert = scorer.model.bert

    def embed(texts: list[str]) -> Any:
        rows = []
        for text in texts:
            ids = fcb.tokenize(pd.Series([text]), scorer.tokenizer)[0]
            batch = torch.LongTensor([ids]).to(scorer.device)
            mask = torch.ones(batch.shape, dtype=torch.float, device=scorer.device)
            with torch.no_grad():
                rows.append(bert(batch, attention_mask=mask)[0][0, 0])
        return torch.stack(rows)

    cos = torch.nn.functional.cosine_similarity(embed(refs), embed(hyps), dim=1)
    return {"chexbert_semb": [float(v) for v in cos.cpu()]}


def score_radgraph(refs: list[str], hyps: list[str], root: Path, device: str) -> dict[str, list[float]]:
    """RadGraph F1 at the simple, partial and complete reward levels, per pair."""
    from radgraph import F1RadGraph

    scorer = F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=str(root / "radgraph"))
    _, rewards, _, _ = scorer(refs=refs, hyps=hyps)
    simple, partial, complete = rewards
    return {
        "radgraph_simple": [float(v) for v in simple],
        "radgraph_partial": [float(v) for v in partial],
        "radgraph_complete": [float(v) for v in complete],
    }


def score_ratescore(refs: list[str], hyps: list[str], root: Path, device: str) -> dict[str, list[float]]:
    """RaTEScore per pair (a pair without entities scores 0.5, as RaTEScore defines it)."""
    _silence_loguru()
    from RaTEScore import RaTEScore

    scorer = RaTEScore(
        bert_model=str(root / "RaTE-NER-Deberta"),
        eval_model=str(root / "BioLORD-2023-C"),
        use_gpu=device.startswith("cuda"),
    )
    scores = scorer.compute_score(list(hyps), list(refs))
    if len(scores) != len(hyps):
        raise RuntimeError(f"RaTEScore returned {len(scores)} scores for {len(hyps)} pairs")
    return {"ratescore": [float(v) for v in scores]}


SCORERS: dict[str, Scorer] = {
    "chexbert_semb": score_chexbert_semb,
    "radgraph": score_radgraph,
    "ratescore": score_ratescore,
}
_IMPORTS = {"chexbert_semb": "f1chexbert.f1chexbert", "radgraph": "radgraph", "ratescore": "RaTEScore"}


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that fix the numbers."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_pairs(path: Path) -> list[dict[str, str]]:
    """Rows ``{"id", "ref", "hyp"}`` from a JSONL file; ids unique, references non-empty."""
    pairs: list[dict[str, str]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{lineno}: not JSON ({exc})") from exc
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("id", "ref", "hyp")):
                raise BadInput(f"{path}:{lineno}: a row needs string fields id, ref and hyp")
            if row["id"] in seen:
                raise BadInput(f"{path}:{lineno}: duplicate id {row['id']!r}")
            if not row["ref"].strip():
                raise BadInput(f"{path}:{lineno}: empty reference for id {row['id']!r}")
            seen.add(row["id"])
            pairs.append({"id": row["id"], "ref": row["ref"], "hyp": row["hyp"]})
    return pairs


def score_pairs(pairs: list[dict[str, str]], metrics: Sequence[str], root: Path, device: str) -> dict[str, Any]:
    """Score every metric; empty predictions get 0 without reaching the scorers."""
    todo = [p for p in pairs if p["hyp"].strip()]
    out: dict[str, Any] = {}
    for metric in metrics:
        if todo:
            scored = SCORERS[metric]([p["ref"] for p in todo], [p["hyp"] for p in todo], root, device)
        else:
            scored = {key: [] for key in OUTPUT_KEYS[metric]}
        for key in OUTPUT_KEYS[metric]:
            values = scored[key]
            if len(values) != len(todo) or any(not math.isfinite(v) for v in values):
                raise RuntimeError(f"{key}: expected {len(todo)} finite scores, got {len(values)}")
            by_id = dict(zip((p["id"] for p in todo), values))
            per_sample = {p["id"]: float(by_id.get(p["id"], 0.0)) for p in pairs}
            aggregate = math.fsum(per_sample.values()) / len(per_sample) if per_sample else None
            out[key] = {"aggregate": aggregate, "per_sample": per_sample}
    return out


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise BadInput(f"--metrics: unknown {unknown or 'empty list'}; choose from {','.join(METRICS)}")
    return list(dict.fromkeys(names))


def _check_imports(metrics: Sequence[str]) -> None:
    import importlib

    _silence_loguru()
    for metric in metrics:
        try:
            importlib.import_module(_IMPORTS[metric])
        except ImportError as exc:
            raise Unavailable(
                f"{metric}: cannot import {_IMPORTS[metric]} ({exc}); create the clinical environment with "
                "`medbench setup-clinical --venv DIR`"
            ) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medbench.metrics.clinical", description=__doc__.split("\n")[0])
    parser.add_argument("--in", dest="inp", type=Path, help="pairs JSONL: {id, ref, hyp} per line")
    parser.add_argument("--out", type=Path, help="scores JSON, written only when every metric succeeded")
    parser.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--device", default="cpu", help="torch device for CheXbert and RaTEScore (default cpu)")
    parser.add_argument("--check", action="store_true", help="import the metric packages and print versions")
    parser.add_argument("--pip-check", action="store_true",
                        help="with --check: also run `pip check`, ignoring the core dependencies medbench itself "
                        "declares (it is installed here with --no-deps)")
    return parser


def pip_check() -> list[str]:
    """``pip check`` problems of the clinical environment, except medbench's own (absent on purpose)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return [line for line in lines if not line.lower().startswith("medbench ") and "no broken requirements" not in
            line.lower()]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = _parse_metrics(args.metrics)
        if args.check:
            _check_imports(metrics)
            problems = pip_check() if args.pip_check else []
            if problems:
                raise Unavailable("pip check: " + "; ".join(problems))
            print(json.dumps({"format": FORMAT, "versions": versions()}))
            return 0
        if args.inp is None or args.out is None:
            raise BadInput("--in and --out are required")
        root = models_root()
        missing = missing_files(root, metrics)
        if missing:
            raise Unavailable(f"missing under {MODELS_ENV}={root}: {', '.join(missing)}")
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ["HF_HUB_CACHE"] = str(root / "hf")
        pairs = read_pairs(args.inp)
        _check_imports(metrics)
        scores = score_pairs(pairs, metrics, root, args.device)
        result = {
            "format": FORMAT,
            "versions": versions(),
            "metrics": scores,
            "n": len(pairs),
            "n_empty": sum(1 for p in pairs if not p["hyp"].strip()),
            "device": args.device,
        }
        _write_atomic(args.out, result)
    except BadInput as exc:
        print(f"medbench-clinical: bad input: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Unavailable, BadWeights) as exc:
        print(f"medbench-clinical: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
