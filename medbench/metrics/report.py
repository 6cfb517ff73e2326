"""Lexical report metrics, protocol ``coco``: pycocoevalcap 1.2 (spec §4).

Pipeline: PTB tokenisation (Stanford CoreNLP 3.4.1, lower-cased, punctuation tokens dropped), then
``Bleu(4)``, ``Rouge()`` (ROUGE-L), ``Meteor()`` and ``Cider()`` with one reference per study.
Headlines are what ``compute_score`` returns (corpus level); per-sample scores are stored too.

* Tokeniser: :class:`PTBTokenizer` runs pycocoevalcap's jar with pycocoevalcap's command line.
  pycocoevalcap writes its input file next to the jar; when that directory is not writable the
  jar is copied once per process into a temporary directory and run from there. Line breaks other
  than ``\\n`` (``\\r``, ``\\v``, U+2028 ...) are replaced by spaces too, because the Java
  tokenizer splits lines on them and would shift every later line; blank texts are not sent.
* METEOR: one ``Meteor()`` JVM per process (:func:`get_meteor`), reused and closed at exit.
* Bootstrap (B = 200, shared resamples): BLEU from cached per-pair n-gram statistics, CIDEr from
  cached n-gram count matrices with the resample's document frequencies, ROUGE-L from per-sample
  scores (its corpus score is their mean). Nothing is re-tokenised. METEOR's CI is opt-in
  (``meteor_ci=True``: re-scores every resample in the JVM, minutes); by default it is ``None``,
  because a CI of per-sample METEOR would not bracket the corpus headline.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medbench.metrics import Metric, MetricResult, MetricUnavailable, preview_ids, scoreable_rows
from medbench.metrics.bootstrap import interval_from_stats, resample_indices

__all__ = [
    "JAVA_MESSAGE",
    "REPORT_KEYS",
    "PTBTokenizer",
    "ReportMetrics",
    "close_meteor",
    "get_meteor",
    "java_version",
    "require_java",
]

JAVA_MESSAGE = "Java 17 is required for METEOR and the PTB tokenizer: install openjdk-17-jre-headless"
REPORT_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "meteor", "cider")
_TOKENIZER_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"

_meteor_lock = threading.Lock()
_meteor: Any = None
_meteor_atexit = False
_jar_copies: dict[Path, Path] = {}


def _pycocoevalcap() -> Any:
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except ImportError as exc:
        raise MetricUnavailable(
            "pycocoevalcap 1.2 is required for report metrics: pip install 'medbench[metrics]'"
        ) from exc
    return ptb


def require_java() -> str:
    """Path of the ``java`` executable; :class:`MetricUnavailable` when there is none."""
    java = shutil.which("java")
    if java is None:
        raise MetricUnavailable(JAVA_MESSAGE)
    return java


def java_version() -> str | None:
    """The ``java -version`` first line, or ``None`` without Java."""
    java = shutil.which("java")
    if java is None:
        return None
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[0] if lines else None


def _dir_writable(path: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=path):
            return True
    except OSError:
        return False


def _remove_jar_copies() -> None:
    for copy_dir in _jar_copies.values():
        shutil.rmtree(copy_dir, ignore_errors=True)
    _jar_copies.clear()


class PTBTokenizer:
    """pycocoevalcap's ``PTBTokenizer.tokenize`` for a flat list of texts, safe on read-only installs.

    ``jar_dir`` is the directory holding ``stanford-corenlp-3.4.1.jar`` (default: pycocoevalcap's
    tokenizer package directory).
    """

    def __init__(self, jar_dir: str | os.PathLike[str] | None = None) -> None:
        ptb = _pycocoevalcap()
        self.jar_name: str = ptb.STANFORD_CORENLP_3_4_1_JAR
        self.punctuations: frozenset[str] = frozenset(ptb.PUNCTUATIONS)
        self.jar_dir = Path(jar_dir) if jar_dir is not None else Path(ptb.__file__).resolve().parent

    def workdir(self) -> Path:
        """Where the jar runs: ``jar_dir`` if writable, else a per-process temporary copy."""
        if _dir_writable(self.jar_dir):
            return self.jar_dir
        key = self.jar_dir.resolve()
        if key not in _jar_copies:
            copy_dir = Path(tempfile.mkdtemp(prefix="medbench-ptb-"))
            shutil.copy2(self.jar_dir / self.jar_name, copy_dir / self.jar_name)
            if not _jar_copies:
                atexit.register(_remove_jar_copies)
            _jar_copies[key] = copy_dir
        return _jar_copies[key]

    def tokenize(self, texts: Sequence[str]) -> list[str]:
        """Tokenised, lower-cased texts with punctuation tokens removed, one per input."""
        require_java()
        flat = [str(t).replace("\n", " ").translate({ord(c): " " for c in _LINE_BREAKS}) for t in texts]
        todo = [i for i, t in enumerate(flat) if t.strip()]
        out = [""] * len(flat)
        if not todo:
            return out
        workdir = self.workdir()
        fd, tmp_name = tempfile.mkstemp(dir=workdir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write("\n".join(flat[i] for i in todo).encode())
            cmd = ["java", "-cp", self.jar_name, _TOKENIZER_CLASS, "-preserveLines", "-lowerCase"]
            proc = subprocess.run(
                [*cmd, os.path.basename(tmp_name)], cwd=workdir, capture_output=True, check=False
            )
        finally:
            os.remove(tmp_name)
        if proc.returncode != 0:
            raise RuntimeError(f"PTB tokenizer failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        lines = proc.stdout.decode().split("\n")
        if len(lines) == len(todo) + 1 and lines[-1] == "":
            lines.pop()
        if len(lines) != len(todo):
            raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(todo)} texts")
        for i, line in zip(todo, lines):
            out[i] = " ".join(w for w in line.rstrip().split(" ") if w not in self.punctuations)
        return out


def get_meteor() -> Any:
    """The process-wide ``pycocoevalcap`` ``Meteor()`` (started on first use, closed at exit)."""
    global _meteor, _meteor_atexit
    require_java()
    _pycocoevalcap()
    from pycocoevalcap.meteor.meteor import Meteor

    if _meteor is not None and _meteor.meteor_p.poll() is not None:
        close_meteor()
    if _meteor is None:
        _meteor = Meteor()
        if not _meteor_atexit:
            atexit.register(close_meteor)
            _meteor_atexit = True
    return _meteor


def close_meteor() -> None:
    """Stop the METEOR JVM if one is running; the next :func:`get_meteor` starts a fresh one."""
    global _meteor
    meteor, _meteor = _meteor, None
    if meteor is None:
        return
    if meteor.lock.locked():  # left held by a failed call; Meteor.__del__ would block on it
        meteor.lock.release()
    proc = meteor.meteor_p
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    proc.kill()
    proc.wait()


def _meteor_score(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, list[float]]:
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    with _meteor_lock:
        try:
            score, scores = get_meteor().compute_score(gts, res)
        except Exception:
            close_meteor()
            raise
    return float(score), [float(s) for s in scores]


def _bleu_stats(refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    """Per pair: testlen, reflen ("closest"), guess[1..4], correct[1..4] (BleuScorer's own cooking)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    rows = []
    for ref, hyp in zip(refs, hyps):
        comps = cook_test(hyp, cook_refs([ref]))
        reflen = min((abs(length - comps["testlen"]), length) for length in comps["reflen"])[1]
        rows.append([comps["testlen"], reflen, *comps["guess"], *comps["correct"]])
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), 10)


def _bleu_corpus(totals: np.ndarray) -> list[float]:
    """BleuScorer.compute_score's corpus formula from summed statistics."""
    small, tiny = 1e-9, 1e-15
    testlen, reflen = int(totals[0]), int(totals[1])
    guess, correct = totals[2:6], totals[6:10]
    bleus, bleu = [], 1.0
    for k in range(4):
        bleu *= float(int(correct[k]) + tiny) / (int(guess[k]) + small)
        bleus.append(bleu ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        bleus = [b * math.exp(1 - 1 / ratio) for b in bleus]
    return bleus


class _CiderResampler:
    """CIDEr-D (n = 4, σ = 6, one reference) for index resamples, from cached n-gram counts."""

    def __init__(self, refs: Sequence[str], hyps: Sequence[str], sigma: float = 6.0) -> None:
        from pycocoevalcap.cider.cider_scorer import precook
        from scipy import sparse

        vocab: dict[tuple[str, ...], int] = {}
        h_rows, r_rows = [], []
        self.len_h = np.zeros(len(refs))
        self.len_r = np.zeros(len(refs))
        for i, (ref, hyp) in enumerate(zip(refs, hyps)):
            for counts, rows, lengths in (
                (precook(hyp), h_rows, self.len_h),
                (precook(ref), r_rows, self.len_r),
            ):
                for ngram, c in counts.items():
                    rows.append((i, vocab.setdefault(ngram, len(vocab)), float(c)))
                lengths[i] = sum(c for g, c in counts.items() if len(g) == 2)
        shape = (len(refs), max(len(vocab), 1))

        def matrix(entries: list[tuple[int, int, float]]) -> Any:
            i, j, v = (np.asarray(x) for x in zip(*entries)) if entries else ([], [], [])
            return sparse.csr_matrix((v, (i, j)), shape=shape, dtype=np.float64)

        hmat, rmat = matrix(h_rows), matrix(r_rows)
        order = np.zeros(shape[1], dtype=np.int64)
        for ngram, j in vocab.items():
            order[j] = len(ngram) - 1
        self.presence = (rmat > 0).astype(np.float64).T.tocsr()
        self.parts = []
        for n in range(4):
            cols = np.flatnonzero(order == n)
            h, r = hmat[:, cols], rmat[:, cols]
            self.parts.append(
                (cols, h.minimum(r).multiply(r).tocsr(), h.multiply(h).tocsr(), r.multiply(r).tocsr())
            )
        self.penalty = np.exp(-((self.len_h - self.len_r) ** 2) / (2 * sigma**2))

    def corpus(self, idx: np.ndarray) -> float:
        weight = np.bincount(idx, minlength=self.len_h.size).astype(np.float64)
        df = self.presence @ weight
        w2 = (np.log(float(idx.size)) - np.log(np.maximum(1.0, df))) ** 2
        vals = np.zeros((self.len_h.size, 4))
        for n, (cols, num, h2, r2) in enumerate(self.parts):
            wn = w2[cols]
            top, norm = num @ wn, np.sqrt(h2 @ wn) * np.sqrt(r2 @ wn)
            vals[:, n] = np.divide(top, norm, out=top.copy(), where=norm != 0)
        scores = vals.mean(axis=1) * self.penalty * 10.0
        return float(scores[idx].mean())


class ReportMetrics(Metric):
    """BLEU-1..4, ROUGE-L, METEOR and CIDEr over rows with ``id``, ``prediction`` and ``answer``.

    ``answer`` is the reference report. ``meteor=False`` skips the METEOR JVM entirely.
    """

    name: ClassVar[str] = "report"

    def __init__(
        self,
        *,
        meteor: bool = True,
        bootstrap: bool = True,
        n_resamples: int = 200,
        seed: int = 0,
        level: float = 0.95,
        meteor_ci: bool = False,
        tokenizer_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.protocol = "coco"
        self.meteor = meteor
        self.bootstrap = bootstrap
        self.n_resamples = n_resamples
        self.seed = seed
        self.level = level
        self.meteor_ci = meteor_ci
        self.tokenizer_dir = tokenizer_dir

    @property
    def keys(self) -> tuple[str, ...]:
        """The metric keys produced."""
        return REPORT_KEYS if self.meteor else tuple(k for k in REPORT_KEYS if k != "meteor")

    @staticmethod
    def versions() -> dict[str, str | None]:
        """Versions that fix the numbers: pycocoevalcap and the Java runtime."""
        try:
            coco = metadata.version("pycocoevalcap")
        except metadata.PackageNotFoundError:
            coco = None
        return {"pycocoevalcap": coco, "java": java_version()}

    def compute(self, rows: Sequence[Any]) -> dict[str, MetricResult]:
        ok, n_errors = scoreable_rows(rows)
        ids = [r["id"] for r in ok]
        hyps = [str(r.get("prediction") or "") for r in ok]
        counts = {"n_rows": len(ok) + n_errors, "errors": n_errors, "empty_predictions": 0}
        if not ok:
            return {k: MetricResult(k, None, {}, 0, protocol=self.protocol, counts=counts) for k in self.keys}
        tokens = PTBTokenizer(self.tokenizer_dir).tokenize([str(r["answer"]) for r in ok] + hyps)
        refs, hyps = tokens[: len(ok)], tokens[len(ok) :]
        empty_refs = [i for i, r in zip(ids, refs) if not r]
        if empty_refs:
            raise ValueError(f"empty reference report(s) after tokenisation: {preview_ids(empty_refs)}")
        counts["empty_predictions"] = sum(1 for h in hyps if not h)
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        gts = {i: [r] for i, r in enumerate(refs)}
        res = {i: [h] for i, h in enumerate(hyps)}
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, rouge_each = Rouge().compute_score(gts, res)
        cider, cider_each = Cider().compute_score(gts, res)
        scored: dict[str, tuple[float, Sequence[float]]] = {
            f"bleu{k + 1}": (bleu[k], bleu_each[k]) for k in range(4)
        }
        scored["rouge_l"] = (rouge, rouge_each)
        scored["cider"] = (cider, cider_each)
        if self.meteor:
            scored["meteor"] = _meteor_score(refs, hyps)
        cis = self._intervals(refs, hyps, np.asarray(rouge_each, dtype=np.float64)) if self.bootstrap else {}
        results = {}
        for key in self.keys:
            value, each = scored[key]
            results[key] = MetricResult(
                name=key,
                value=float(value),
                per_sample={rid: float(v) for rid, v in zip(ids, each)},
                n=len(ok),
                protocol=self.protocol,
                ci=cis.get(key),
                counts=dict(counts),
            )
        return results

    def _intervals(
        self, refs: list[str], hyps: list[str], rouge_each: np.ndarray
    ) -> dict[str, dict[str, Any]]:
        stats: dict[str, list[float]] = {k: [] for k in self.keys}
        bleu_stats = _bleu_stats(refs, hyps)
        cider = _CiderResampler(refs, hyps)
        for idx in resample_indices(len(refs), self.n_resamples, self.seed):
            for k, b in enumerate(_bleu_corpus(bleu_stats[idx].sum(axis=0))):
                stats[f"bleu{k + 1}"].append(b)
            stats["rouge_l"].append(float(rouge_each[idx].mean()))
            stats["cider"].append(cider.corpus(idx))
            if self.meteor and self.meteor_ci:
                stats["meteor"].append(_meteor_score([refs[i] for i in idx], [hyps[i] for i in idx])[0])
        return {
            key: interval_from_stats(values, self.level, self.n_resamples, self.seed)
            for key, values in stats.items()
            if values
        }
