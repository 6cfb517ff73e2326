"""Clinical metrics (spec §6-7): the subprocess client against a fake clinical interpreter, and the
stdlib-only module's IO with stubbed scorers. Real weights: skipped unless MEDBENCH_MODELS and
MEDBENCH_CLINICAL_PYTHON are set."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from medbench.metrics import MetricUnavailable
from medbench.metrics import clinical as module
from medbench.metrics.clinical_client import ClinicalMetrics, ClinicalMetricsError

ROWS = [
    {"id": "a", "prediction": "No acute process.", "answer": "No acute cardiopulmonary process."},
    {"id": "b", "prediction": "", "answer": "Small left pleural effusion."},
    {"id": "c", "prediction": "Cardiomegaly.", "answer": "Mild cardiomegaly.", "error": None},
    {"id": "d", "prediction": None, "answer": "x", "error": "timeout"},
]

FAKE = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
assert args[:2] == ["-m", "medbench.metrics.clinical"], args
opts = dict(zip(args[2::2], args[3::2]))
mode = os.environ.get("FAKE_CLINICAL_MODE", "ok")
with open(os.environ["FAKE_CLINICAL_LOG"], "w") as fh:
    json.dump({{"argv": args, "cwd": os.getcwd(), "offline": os.environ.get("HF_HUB_OFFLINE"),
               "models": os.environ.get("MEDBENCH_MODELS"), "pythonpath": os.environ.get("PYTHONPATH")}}, fh)
pairs = [json.loads(line) for line in open(opts["--in"])]
keys = {{"chexbert_semb": ["chexbert_semb"], "ratescore": ["ratescore"],
        "radgraph": ["radgraph_simple", "radgraph_partial", "radgraph_complete"]}}
metrics = {{}}
for metric in opts["--metrics"].split(","):
    for i, key in enumerate(keys[metric]):
        per = {{p["id"]: (0.0 if not p["hyp"].strip() else 0.5 + 0.1 * i) for p in pairs}}
        metrics[key] = {{"aggregate": sum(per.values()) / len(per), "per_sample": per}}
if mode == "partial":
    metrics["ratescore"]["per_sample"].pop(pairs[0]["id"])
if mode == "nan":
    metrics["chexbert_semb"]["per_sample"][pairs[0]["id"]] = float("nan")
out = {{"format": 1, "versions": {{"f1chexbert": "0.0.2"}}, "metrics": metrics, "n": len(pairs),
       "n_empty": sum(1 for p in pairs if not p["hyp"].strip())}}
with open(opts["--out"], "w") as fh:
    json.dump(out, fh)
if mode == "crash":
    sys.stderr.write("Traceback (most recent call last):\\nRuntimeError: boom in radgraph\\n")
    sys.exit(1)
if mode == "unavailable":
    sys.stderr.write("medbench-clinical: unavailable: missing under MEDBENCH_MODELS: chexbert/chexbert.pth\\n")
    sys.exit(3)
"""


@pytest.fixture()
def models_root(tmp_path):
    root = tmp_path / "models"
    for rels in module.LAYOUT.values():
        for rel in rels:
            path = root / rel
            if rel.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
    return root


@pytest.fixture()
def fake_python(tmp_path, monkeypatch):
    script = tmp_path / "fake-python"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_CLINICAL_LOG", str(tmp_path / "fake-log.json"))
    monkeypatch.setenv("PYTHONPATH", "/should/not/leak")
    return script


def _log(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "fake-log.json").read_text())


def test_client_merges_complete_output(fake_python, models_root, tmp_path):
    metric = ClinicalMetrics(clinical_python=fake_python, models_root=models_root, n_resamples=20)
    res = metric.compute(ROWS)
    assert set(res) == {"chexbert", "radgraph", "radgraph_simple", "radgraph_complete", "ratescore"}
    assert res["radgraph"].per_sample == {"a": 0.6, "b": 0.0, "c": 0.6}  # partial level is the headline
    assert res["radgraph_simple"].per_sample["a"] == 0.5
    assert res["chexbert"].value == pytest.approx(1.0 / 3) and res["chexbert"].ci["n_resamples"] == 20
    assert res["ratescore"].counts == {"n_rows": 4, "errors": 1, "n_empty": 1}
    log = _log(tmp_path)
    assert log["offline"] == "1" and log["models"] == str(models_root) and log["pythonpath"] is None
    assert Path(log["cwd"]) != Path.cwd() and "--metrics" in log["argv"]
    assert metric.details()["versions"] == {"f1chexbert": "0.0.2"}
    assert metric.details()["protocols"]["radgraph"].startswith("radgraph_f1_partial@")


def test_subset_of_metrics(fake_python, models_root):
    res = ClinicalMetrics(clinical_python=fake_python, models_root=models_root, metrics=["ratescore"]).compute(ROWS)
    assert set(res) == {"ratescore"}


@pytest.mark.parametrize("mode", ["partial", "nan"])
def test_partial_or_bad_output_is_never_merged(fake_python, models_root, monkeypatch, mode):
    monkeypatch.setenv("FAKE_CLINICAL_MODE", mode)
    with pytest.raises(ClinicalMetricsError, match="nothing merged"):
        ClinicalMetrics(clinical_python=fake_python, models_root=models_root).compute(ROWS)


def test_nonzero_exit_fails_clearly_even_with_an_output_file(fake_python, models_root, monkeypatch):
    monkeypatch.setenv("FAKE_CLINICAL_MODE", "crash")
    with pytest.raises(ClinicalMetricsError, match=r"(?s)failed \(exit 1\); nothing merged:\n.*boom in radgraph"):
        ClinicalMetrics(clinical_python=fake_python, models_root=models_root).compute(ROWS)


def test_exit_3_is_unavailable(fake_python, models_root, monkeypatch):
    monkeypatch.setenv("FAKE_CLINICAL_MODE", "unavailable")
    with pytest.raises(MetricUnavailable, match="chexbert/chexbert.pth"):
        ClinicalMetrics(clinical_python=fake_python, models_root=models_root).compute(ROWS)


def test_missing_interpreter_or_weights_are_unavailable(tmp_path, models_root, fake_python, monkeypatch):
    monkeypatch.delenv("MEDBENCH_CLINICAL_PYTHON", raising=False)
    with pytest.raises(MetricUnavailable, match="setup-clinical.*clinical_python.*MEDBENCH_CLINICAL_PYTHON"):
        ClinicalMetrics(models_root=models_root)
    with pytest.raises(MetricUnavailable, match="does not exist or is not executable"):
        ClinicalMetrics(clinical_python=tmp_path / "nope" / "python", models_root=models_root)
    monkeypatch.setenv("MEDBENCH_CLINICAL_PYTHON", str(fake_python))
    (models_root / "chexbert" / "chexbert.pth").unlink()
    with pytest.raises(MetricUnavailable, match=r"place chexbert/chexbert\.pth there"):
        ClinicalMetrics(models_root=models_root)
    monkeypatch.delenv("MEDBENCH_MODELS", raising=False)
    with pytest.raises(MetricUnavailable, match="MEDBENCH_MODELS=DIR"):
        ClinicalMetrics()


def test_real_module_through_a_real_interpreter_reports_missing_packages(models_root):
    """sys.executable runs the real module; the core env has no f1chexbert, so it exits 3."""
    pytest.importorskip("medbench.metrics.clinical")
    try:
        import f1chexbert  # noqa: F401
        pytest.skip("f1chexbert is importable here")
    except ImportError:
        pass
    metric = ClinicalMetrics(clinical_python=sys.executable, models_root=models_root, metrics=["chexbert_semb"])
    with pytest.raises(MetricUnavailable, match="cannot import f1chexbert"):
        metric.compute(ROWS)


def test_score_report_records_clinical_failure_and_keeps_the_rest(fake_python, models_root, monkeypatch):
    from medbench import scoring
    from medbench.metrics import report

    def no_java(self, rows):
        raise MetricUnavailable("Java 17 is required")

    monkeypatch.setattr(report.ReportMetrics, "compute", no_java)
    monkeypatch.setenv("FAKE_CLINICAL_MODE", "crash")
    metrics, _, _, counts = scoring.score_report(ROWS, 0, clinical_python=str(fake_python),
                                                 models_root=str(models_root))
    assert "chexbert" not in metrics and "bleu4" in metrics
    assert "boom in radgraph" in counts["unavailable"]["clinical"]
    monkeypatch.setenv("FAKE_CLINICAL_MODE", "ok")
    metrics, cis, per_sample, counts = scoring.score_report(ROWS, 0, clinical_python=str(fake_python),
                                                            models_root=str(models_root))
    assert metrics["radgraph"] == pytest.approx(0.4) and cis["ratescore"]["n_resamples"] == 1000
    assert counts["clinical_empty"] == 1 and "clinical" not in counts["unavailable"]
    assert counts["metric_details"]["clinical"]["protocols"]["chexbert"].startswith("chexbert_semb@")


def test_score_run_writes_clinical_metrics_and_unavailable(fake_python, models_root, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from medbench import scoring
    from medbench.metrics import report
    from medbench.predictions import PredictionsWriter
    from medbench.types import AnswerType, Prediction, Sample

    monkeypatch.setattr(report.ReportMetrics, "compute", lambda self, rows: {})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "fingerprint": "fp", "config": {"task": "fake-report", "model": "m", "seed": 3}, "tuning": "none",
        "decoding": "greedy", "method_args": {}, "geometry": {}}))
    rows = [r for r in ROWS if not r.get("error")]
    PredictionsWriter(run_dir / "predictions.jsonl", "fp").append(
        [Prediction(r["id"], "h", r["prediction"], r["answer"], "report", 0) for r in rows])
    samples = [Sample(r["id"], "img.png", "Describe.", r["answer"], AnswerType.REPORT, "test") for r in rows]
    task = SimpleNamespace(name="fake-report", version="1", kind="report", metric_protocol="coco")
    results = scoring.score_run(run_dir, samples=samples, task=task, report_options={
        "clinical_python": str(fake_python), "models_root": str(models_root), "clinical_metrics": ("ratescore",)})
    assert results["metrics"]["ratescore"] == pytest.approx(1 / 3) and results["counts"]["clinical_empty"] == 1
    assert "unavailable" not in results["counts"] and "bertscore" in results["unavailable"]
    assert results["metric_details"]["clinical"]["protocols"] == {"ratescore": "ratescore@0.6.0 (empty prediction = 0)"}
    assert results["confidence_intervals"]["ratescore"]["seed"] == 3
    assert json.loads((run_dir / "per_sample.json").read_text())["ratescore"]["b"] == 0.0


# --- the module itself (in-process, stubbed scorers) -------------------------------------------


def _write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def stubbed(monkeypatch, models_root):
    calls: list[tuple[str, list[str]]] = []

    def stub(metric):
        def scorer(refs, hyps, root, device):
            calls.append((metric, list(hyps)))
            return {k: [0.25 * (i + 1) for _ in hyps] for i, k in enumerate(module.OUTPUT_KEYS[metric])}
        return scorer

    for metric in module.METRICS:
        monkeypatch.setitem(module.SCORERS, metric, stub(metric))
    monkeypatch.setattr(module, "_check_imports", lambda metrics: None)
    monkeypatch.setenv("MEDBENCH_MODELS", str(models_root))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
    return calls


def test_module_scores_and_writes_output(stubbed, tmp_path, models_root):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", [{"id": "x", "ref": "r1", "hyp": "h1"},
                                                    {"id": "y", "ref": "r2", "hyp": " "}])
    out = tmp_path / "scores.json"
    assert module.main(["--in", str(pairs), "--out", str(out), "--metrics", "radgraph,ratescore"]) == 0
    data = json.loads(out.read_text())
    assert data["format"] == module.FORMAT and data["n"] == 2 and data["n_empty"] == 1
    assert data["metrics"]["radgraph_partial"] == {"aggregate": 0.25, "per_sample": {"x": 0.5, "y": 0.0}}
    assert set(data["metrics"]) == {"radgraph_simple", "radgraph_partial", "radgraph_complete", "ratescore"}
    assert stubbed == [("radgraph", ["h1"]), ("ratescore", ["h1"])]  # empty predictions never reach scorers
    assert "transformers" in data["versions"]
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_CACHE"] == str(models_root / "hf")


def test_module_writes_nothing_when_a_scorer_fails(stubbed, tmp_path, monkeypatch):
    def boom(refs, hyps, root, device):
        raise RuntimeError("boom")

    monkeypatch.setitem(module.SCORERS, "ratescore", boom)
    pairs = _write_pairs(tmp_path / "pairs.jsonl", [{"id": "x", "ref": "r", "hyp": "h"}])
    with pytest.raises(RuntimeError, match="boom"):
        module.main(["--in", str(pairs), "--out", str(tmp_path / "scores.json")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "pairs.jsonl"]


def test_module_rejects_bad_input_and_reports_missing_weights(stubbed, tmp_path, models_root, capsys):
    dup = _write_pairs(tmp_path / "dup.jsonl", [{"id": "x", "ref": "r", "hyp": "h"}] * 2)
    out = tmp_path / "o.json"
    assert module.main(["--in", str(dup), "--out", str(out)]) == module.EXIT_BAD_INPUT
    assert module.main(["--in", str(dup), "--out", str(out), "--metrics", "bleu"]) == module.EXIT_BAD_INPUT
    (models_root / "radgraph" / "radgraph" / "weights.th").unlink()
    assert module.main(["--in", str(dup), "--out", str(out), "--metrics", "radgraph"]) == module.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "duplicate id 'x'" in err and "unknown ['bleu']" in err and "radgraph/radgraph/weights.th" in err
    assert not out.exists()


def test_module_imports_only_the_standard_library():
    code = ("import sys, medbench.metrics.clinical; "
            "bad = {'torch', 'numpy', 'transformers', 'pandas'} & set(sys.modules); print(sorted(bad))")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_setup_clinical_dry_run_prints_the_plan(capsys, tmp_path):
    from medbench.cli import main

    assert main(["setup-clinical", "--venv", str(tmp_path / "venv"), "--dry-run",
                 "--torch-index-url", "https://download.pytorch.org/whl/cpu"]) == 0
    out = capsys.readouterr().out
    assert "-m venv" in out and "constraints-clinical.txt" in out and "f1chexbert==0.0.2" in out
    assert "--no-deps" in out and "medbench.metrics.clinical --check" in out
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(not (os.environ.get("MEDBENCH_MODELS") and os.environ.get("MEDBENCH_CLINICAL_PYTHON")),
                    reason="real clinical weights: set MEDBENCH_MODELS and MEDBENCH_CLINICAL_PYTHON")
def test_real_weights_identical_reports():
    text = "Mild cardiomegaly. No pleural effusion or pneumothorax."
    rows = [{"id": "same", "prediction": text, "answer": text},
            {"id": "empty", "prediction": "", "answer": text}]
    res = ClinicalMetrics(n_resamples=10).compute(rows)
    assert res["chexbert"].per_sample["same"] == pytest.approx(1.0, abs=1e-4)
    assert res["radgraph"].per_sample["same"] == pytest.approx(1.0)
    assert all(r.per_sample["empty"] == 0.0 for r in res.values())


def test_chexbert_file_checked_before_f1chexbert_loads_it(tmp_path):
    """f1chexbert loads chexbert.pth with strict=False; medbench reads it first and names a wrong file."""
    import torch

    good = tmp_path / "chexbert.pth"
    torch.save({"model_state_dict": {"module.bert.pooler.dense.weight": torch.zeros(2, 2),
                                     "module.linear_heads.0.bias": torch.zeros(4)}, "epoch": 3}, good)
    assert module._chexbert_state_keys(good) == {"bert.pooler.dense.weight", "linear_heads.0.bias"}
    bare = tmp_path / "bare.pth"
    torch.save({"bert.pooler.dense.weight": torch.zeros(2)}, bare)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    for path, needle in ((bare, "model_state_dict"), (truncated, "weights_only=True"), (text, "weights_only=True")):
        with pytest.raises(module.BadWeights) as err:
            module._chexbert_state_keys(path)
        assert str(path) in str(err.value) and needle in str(err.value) and "chexbert.pth" in str(err.value)


def test_pip_check_ignores_only_medbench_itself(monkeypatch):
    import subprocess

    class Done:
        stdout = ("medbench 0.1.0 requires peft, which is not installed.\n"
                  "radgraph 0.1.18 has requirement transformers<5, but you have transformers 5.24.0.\n")
        stderr = ""

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Done())
    assert module.pip_check() == ["radgraph 0.1.18 has requirement transformers<5, but you have transformers 5.24.0."]
    Done.stdout = "No broken requirements found.\n"
    assert module.pip_check() == []
