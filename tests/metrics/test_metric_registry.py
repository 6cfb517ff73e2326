"""One declaration per display fact: the metric registry (scale, unit, direction, label, aliases)
read by tables and compare alike, and table labels / suite pairs declared on the method classes."""

from __future__ import annotations

import json

import pytest

from medbench import compare as C
from medbench import metric_registry as MR
from medbench import tables as T
from medbench.registry import METHODS, TASKS, Entry


def test_tables_and_compare_print_every_metric_alike():
    names = [*MR.names(), *(a for v in MR.aliases().values() for a in v),
             "finding_f1", "weak_label_iou", "closed_accuracy@llava_med", "roi_lift@attn-v1", "meteor@coco"]
    for metric in names:
        assert T.display_scale(metric) == C.metric_scale(metric) == MR.display_scale(metric), metric
    # a metric the registry does not know is shown as stored, in both
    assert T.display_scale("finding_f1") == C.metric_scale("finding_f1") == (1.0, 4)
    assert T.metric_unit("finding_f1") == "value"


@pytest.mark.parametrize("metric,unit,scale", [
    ("closed_accuracy", "percent", (100.0, 2)), ("closed_acc@x", "percent", (100.0, 2)),
    ("open_f1", "percent", (100.0, 2)), ("bertscore_f1", "percent", (100.0, 2)),
    ("coverage", "fraction", (1.0, 3)), ("roi_mass", "fraction", (1.0, 3)),
    ("roi_lift", "ratio", (1.0, 3)), ("attention_peak", "ratio", (1.0, 3)),
])
def test_units_and_scales(metric, unit, scale):
    assert MR.unit(metric) == unit and MR.display_scale(metric) == scale
    assert MR.higher_is_better(metric) is True


def test_layouts_are_the_paper_columns_in_order():
    assert MR.layout_metrics("vqa") == ("open_recall", "closed_accuracy")
    assert MR.layout_metrics("attention") == ("coverage", "intensity", "roi_mass", "roi_lift", "attention_peak")
    assert MR.layout_metrics("report")[:4] == ("bleu1", "bleu2", "bleu3", "bleu4")
    assert MR.label("rouge_l") == "ROUGE-L" and MR.label("unknown_metric") == "unknown_metric"
    assert MR.higher_is_better("unknown_metric") is None


def test_register_refuses_clashes_and_bad_units():
    with pytest.raises(ValueError, match="already registered"):
        MR.register(MR.MetricInfo("rougeL", "x", "percent"))
    with pytest.raises(ValueError, match="unit must be"):
        MR.MetricInfo("m", "M", "permille")
    with pytest.raises(ValueError, match="layout must be"):
        MR.MetricInfo("m", "M", "percent", layout="table9")


def _result(**kw) -> dict:
    base = {"task": "slake", "model": "llava-med-v1", "tuning": "none", "decoding": "greedy",
            "metrics": {"closed_accuracy": 0.5}}
    return {**base, **kw}


def test_a_registered_metric_becomes_a_table_column(monkeypatch):
    info = MR.MetricInfo("open_bleu", "Open BLEU", "fraction", "vqa")
    monkeypatch.setitem(MR._METRICS, info.name, info)
    data = json.loads(T.render("vqa", [_result(metrics={"closed_accuracy": 0.5, "open_bleu": 0.4567})], "json"))
    cols = {c["key"]: c for c in data["columns"]}
    assert cols["slake/open_bleu"]["label"] == "SLAKE Open BLEU" and cols["slake/open_bleu"]["scale"] == "fraction"
    assert data["rows"][0]["cells"]["slake/open_bleu"]["value"] == 0.457  # as stored, 3 decimals


def _rows(results: list[dict]) -> list[tuple[str, str]]:
    return [(r["model"], r["method"]) for r in json.loads(T.render("vqa", results, "json", paper={}))["rows"]]


def test_table_labels_come_from_the_method_declarations(monkeypatch):
    assert _rows([_result(tuning="lora", decoding="vcd")]) == [("LLaVA-Med + LoRA", "VCD")]
    assert _rows([_result(tuning="a3tune", decoding="vcd")]) == [("LLaVA-Med + LoRA", "A3TUNE → VCD")]
    # a tuning method declaring another block label and no row label of its own
    monkeypatch.setitem(METHODS._entries, "qtune", Entry("qtune", "x:Q", {"kind": "tuning", "label": "QTune",
                                                                          "block_label": "QLoRA"}))
    monkeypatch.setitem(METHODS._entries, "mydec", Entry("mydec", "x:D", {"kind": "decoding", "label": "MyDec"}))
    assert _rows([_result(tuning="qtune", decoding="mydec")]) == [("LLaVA-Med + QLoRA", "MyDec")]
    # a tuning nobody registered is shown by its name, never as LoRA
    assert _rows([_result(tuning="mystery", decoding="greedy")]) == [("LLaVA-Med + mystery", "Greedy")]


def test_rows_sort_in_the_registry_order():
    res = [_result(decoding=d) for d in ("controlmllm", "vcd", "beam", "greedy")]
    assert [m for _, m in _rows(res)] == ["Greedy", "Beam", "VCD", "ControlMLLM"]


def test_supports_is_declared_on_the_method():
    controlmllm = METHODS.get("controlmllm")
    assert controlmllm.supports(TASKS.get("phantom-vqa"))
    assert not controlmllm.supports(TASKS.get("phantom-report"))
    assert METHODS.get("vcd").supports(TASKS.get("phantom-report"))


def test_baseline_suite_pairs_follow_supports(monkeypatch):
    from medbench.regression import Suite

    keys = {e.key for e in Suite().entries()}
    assert "phantom-vqa/none+controlmllm" in keys and "phantom-report/none+controlmllm" not in keys
    monkeypatch.setattr(METHODS.get("vcd"), "supports", classmethod(lambda cls, task: task.kind == "report"))
    keys = {e.key for e in Suite().entries()}
    assert "phantom-report/lora+vcd" in keys and "phantom-vqa/lora+vcd" not in keys


def test_baseline_suite_tunings_pair_with_their_declared_decodings(monkeypatch):
    from medbench.regression import Suite

    def decodings(tuning: str) -> set[str]:
        return {e.decoding for e in Suite().entries() if e.task == "phantom-vqa" and e.tuning == tuning}

    assert decodings("a3tune") == {"greedy"}
    assert decodings("lora") == decodings("none") and len(decodings("lora")) == 11
    monkeypatch.setattr(METHODS.get("a3tune"), "baseline_decodings", ("greedy", "vcd"))
    monkeypatch.setattr(METHODS.get("lora"), "baseline_decodings", ("beam",))
    assert (decodings("a3tune"), decodings("lora")) == ({"greedy", "vcd"}, {"beam"})
