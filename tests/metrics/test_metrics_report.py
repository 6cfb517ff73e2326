"""Lexical report metrics, protocol ``coco`` (pycocoevalcap 1.2, spec §4)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocoevalcap")

from medbench.metrics import MetricUnavailable  # noqa: E402
from medbench.metrics import report as R  # noqa: E402

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="Java is required for the PTB tokenizer and METEOR"
)

REFS = [
    "The heart size is normal. No acute disease.",
    "Left lower lobe opacity, likely pneumonia.",
    "No pleural effusion or pneumothorax.",
    "Mild cardiomegaly with clear lungs.",
    "Stable chest radiograph.",
]
HYPS = [
    "heart size normal, no acute disease",
    "",
    "no effusion or pneumothorax is seen",
    "Mild cardiomegaly. Lungs are clear.",
    "stable chest",
]
ROWS = [{"id": f"s{i}", "prediction": h, "answer": r} for i, (r, h) in enumerate(zip(REFS, HYPS))]

# Computed once with pycocoevalcap 1.2 and OpenJDK 17.0.15 (Debian), numpy 2.4.
EXPECTED = {
    "bleu1": (
        0.552720467706737,
        [0.7165313103349458, 0.0, 0.6666666665555557, 0.7999999996800004, 0.6065306591061034],
    ),
    "bleu2": (
        0.4398673433712965,
        [0.6408850871556931, 0.0, 0.5163977793996495, 0.4472135953098925, 0.6065306589544709],
    ),
    "bleu3": (
        0.32596456542839614,
        [0.527944783386671, 0.0, 0.4054801329548782, 4.0548013285125586e-06, 0.0060653065910610355],
    ),
    "bleu4": (
        0.23088200674874332,
        [0.43298201446569307, 0.0, 6.865890478059747e-05, 1.3512001541032851e-08, 0.0006065306591819196],
    ),
    "rouge_l": (0.5894324552968563, [0.8356164383561644, 0.0, 0.7393939393939394, 0.6, 0.7721518987341772]),
    "meteor": (
        0.3053596012928108,
        [0.46856954842382964, 0.0, 0.34272262745996446, 0.40019768605205436, 0.33520678036654417],
    ),
    "cider": (
        3.019054994653696,
        [5.191360484547806, 0.0, 3.5224432916905366, 2.6249999999999996, 3.7564711970301365],
    ),
}


@pytest.fixture(scope="module")
def scored() -> dict:
    return R.ReportMetrics(seed=11).compute(ROWS)


@needs_java
def test_regression_values(scored: dict) -> None:
    assert set(scored) == set(R.REPORT_KEYS)
    for key, (value, per_sample) in EXPECTED.items():
        assert scored[key].value == pytest.approx(value, rel=1e-9, abs=1e-12), key
        got = [scored[key].per_sample[f"s{i}"] for i in range(5)]
        assert got == pytest.approx(per_sample, rel=1e-9, abs=1e-12), key
        assert scored[key].n == 5 and scored[key].protocol == "coco"
    assert scored["bleu1"].counts == {"n_rows": 5, "errors": 0, "empty_predictions": 1}


@needs_java
def test_empty_hypothesis_scores_zero(scored: dict) -> None:
    assert all(scored[key].per_sample["s1"] == 0.0 for key in R.REPORT_KEYS)


@needs_java
def test_bootstrap_intervals(scored: dict) -> None:
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        ci = scored[key].ci
        assert ci["method"] == "percentile-bootstrap" and ci["n_resamples"] == 200 and ci["seed"] == 11
        assert ci["low"] <= ci["high"]
    assert scored["meteor"].ci is None  # opt-in (meteor_ci=True)


@needs_java
def test_identical_text() -> None:
    texts = [
        "the heart size is normal and the lungs are clear",
        "small left pleural effusion with basilar atelectasis",
        "no focal consolidation pneumothorax or effusion is seen",
    ]
    rows = [{"id": str(i), "prediction": t, "answer": t} for i, t in enumerate(texts)]
    out = R.ReportMetrics(bootstrap=False).compute(rows)
    assert out["bleu4"].value == pytest.approx(1.0, abs=1e-6)
    assert out["rouge_l"].value == pytest.approx(1.0)
    assert all(v == pytest.approx(10.0) for v in out["cider"].per_sample.values())
    assert all(v > 0.95 for v in out["meteor"].per_sample.values())


@needs_java
def test_tokenizer_matches_pycocoevalcap() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer as Upstream

    texts = [*REFS, "Heart: normal -- (no) [acute] findings; 2.5 cm!", "Multi\nline report."]
    upstream = Upstream().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert R.PTBTokenizer().tokenize(texts) == [upstream[i][0] for i in range(len(texts))]


@needs_java
def test_tokenizer_keeps_alignment_on_other_line_breaks() -> None:
    out = R.PTBTokenizer().tokenize(["a\rb", "", "c\u2028done.", "  ", "e"])
    assert out == ["a b", "", "c done", "", "e"]


@needs_java
def test_read_only_tokenizer_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = R.PTBTokenizer().jar_dir
    read_only = tmp_path / "tokenizer"
    read_only.mkdir()
    shutil.copy2(source / "stanford-corenlp-3.4.1.jar", read_only)
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    # root ignores mode bits, so also tell the probe the directory is not writable
    real_probe = R._dir_writable
    monkeypatch.setattr(R, "_dir_writable", lambda p: False if Path(p) == read_only else real_probe(p))
    try:
        tokenizer = R.PTBTokenizer(read_only)
        assert tokenizer.workdir() != read_only
        assert tokenizer.tokenize(["No acute disease."]) == ["no acute disease"]
        assert os.listdir(read_only) == ["stanford-corenlp-3.4.1.jar"]
        assert os.listdir(tokenizer.workdir()) == ["stanford-corenlp-3.4.1.jar"]
        out = R.ReportMetrics(meteor=False, bootstrap=False, tokenizer_dir=read_only).compute(ROWS)
        assert out["bleu1"].value == pytest.approx(EXPECTED["bleu1"][0])
        assert "meteor" not in out
    finally:
        read_only.chmod(stat.S_IRWXU)


def test_java_missing_is_metric_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(R.shutil, "which", lambda name: None)
    with pytest.raises(MetricUnavailable, match="install openjdk-17-jre-headless"):
        R.ReportMetrics().compute(ROWS)
    with pytest.raises(MetricUnavailable, match="Java 17 is required"):
        R.get_meteor()


def test_error_rows_and_empty_input() -> None:
    out = R.ReportMetrics().compute([{"id": "a", "prediction": "", "answer": "x", "error": "oom"}])
    assert out["bleu4"].value is None and out["bleu4"].n == 0 and out["bleu4"].counts["errors"] == 1


def test_resampling_fast_paths_match_pycocoevalcap() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    refs = [
        "the heart is normal",
        "left lower lobe opacity likely pneumonia",
        "no effusion",
        "mild cardiomegaly",
    ]
    hyps = [
        "heart normal",
        "",
        "no effusion or pneumothorax",
        "mild cardiomegaly clear lungs and mild effusion",
    ]
    bleu_stats = R._bleu_stats(refs, hyps)
    cider = R._CiderResampler(refs, hyps)
    for idx in (np.arange(4), np.array([0, 0, 2, 3]), np.array([1, 3, 3, 3, 2, 0])):
        gts = {j: [refs[i]] for j, i in enumerate(idx)}
        res = {j: [hyps[i]] for j, i in enumerate(idx)}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        assert R._bleu_corpus(bleu_stats[idx].sum(axis=0)) == pytest.approx(bleu, rel=1e-12)
        assert cider.corpus(idx) == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-9)
