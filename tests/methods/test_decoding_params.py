"""The registered decoding methods' parameters: paper defaults, typed from ``--method-args`` strings,
validation messages, and an end-to-end run. (The generic parser and the routing between tuning and
decoding arguments: test_method_args.py; random strings: test_fuzz_method_args.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from medbench.method import DecodingMethod, MethodArgsError, parse_method_args
from medbench.paths import ASSETS
from medbench.registry import METHODS
from medbench.runner import RunConfig

BASELINES = {
    "vcd": "VCD", "dola": "DoLa", "opera": "OPERA", "avisc": "AVISC",
    "m3id": "M3ID", "damro": "DAMRO", "pai": "PAI", "controlmllm": "ControlMLLM",
}

DEFAULTS = {
    "vcd": {"alpha": 1.0, "beta": 0.1, "noise_step": 500, "selection": "sample", "top_k": 0},
    "dola": {"candidate_layers": "low", "relative_top": 0.1, "selection": "greedy", "repetition_penalty": 1.0},
    "opera": {"num_beams": 5, "num_attn_candidates": 5, "penalty_weights": 1.0, "window_size": 512},
    "avisc": {"alpha": 1.0, "beta": 0.1, "blind_rule": "topk", "top_blind": 10, "selection": "sample"},
    "m3id": {"lam": 0.02, "beta": 0.1, "selection": "sample", "alpha_conf": None},
    "damro": {"k": 10, "alpha": 0.5, "beta": 0.1, "selection": "sample"},
    "pai": {"alpha": 0.2, "gamma": 1.1, "start_layer": 2, "end_layer": None, "beta": 0.1, "selection": "greedy"},
    "controlmllm": {"beta": 0.5, "alpha": 400.0, "lr": None, "steps": 5, "early_stop": True, "selection": "greedy"},
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_registered_with_paper_defaults(name):
    cls = METHODS.get(name)
    assert cls.__name__ == BASELINES[name] and cls.__module__ == f"medbench.methods.{name}"
    assert issubclass(cls, DecodingMethod) and METHODS.entry(name).info["kind"] == "decoding"
    args = cls().resolved_args()
    assert {k: args[k] for k in DEFAULTS[name]} == DEFAULTS[name]
    assert args["variant"] == "default"
    variant = next(f for f in dataclasses.fields(cls.Params) if f.name == "variant")
    assert "reference" in str(variant.type)


def test_every_module_documents_default_and_reference():
    import importlib

    for name in BASELINES:
        doc = importlib.import_module(f"medbench.methods.{name}").__doc__
        assert "Defaults" in doc and "reference" in doc, name


def test_method_args_are_typed_from_strings():
    vcd = METHODS.get("vcd")(**parse_method_args(["alpha=0.5", "selection=greedy", "top_k=none"]))
    assert (vcd.params.alpha, vcd.params.selection, vcd.params.top_k) == (0.5, "greedy", 0)
    assert METHODS.get("avisc")(variant="reference").params.blind_rule == "std"
    assert METHODS.get("avisc")(variant="reference", blind_rule="topk").params.blind_rule == "topk"
    assert METHODS.get("vcd")(variant="a3tune").params.top_k == 50
    assert METHODS.get("controlmllm")(early_stop="off").params.early_stop is False


@pytest.mark.parametrize(("name", "args", "match"), [
    ("vcd", {"alpah": "1"}, "did you mean 'alpha'"),
    ("vcd", {"alpha": "strong"}, "expected float"),
    ("vcd", {"beta": "2"}, "beta must be in"),
    ("vcd", {"noise_step": "1000"}, "noise_step"),
    ("vcd", {"variant": "paper"}, "expected one of"),
    ("vcd", {"selection": "maybe"}, "expected one of"),
    ("dola", {"candidate_layers": "middle"}, "candidate_layers"),
    ("dola", {"relative_top": "0"}, "relative_top"),
    ("pai", {"gamma": "0.5"}, "gamma"),
    ("m3id", {"variant": "paper"}, "alpha_conf"),
    ("opera", {"num_beams": "0"}, "num_beams"),
    ("controlmllm", {"early_stop": "perhaps"}, "boolean"),
    ("damro", {"k": "0"}, "k must be"),
    ("avisc", {"top_p": "1.5"}, "top_p"),
    ("nucleus", {"top_p": "1.5"}, "top_p"),
])
def test_method_args_errors(name, args, match):
    with pytest.raises(MethodArgsError, match=match):
        METHODS.get(name)(**args)


@pytest.mark.skipif(not (ASSETS / "tiny-med-llava" / "model.safetensors").exists(),
                    reason="shipped tiny-med-llava checkpoint not built yet")
@pytest.mark.parametrize("method", ["vcd", "controlmllm"])
def test_end_to_end_run(tmp_path, method):
    from medbench.runner import run

    pytest.importorskip("medbench.tasks.phantom")
    results = run(RunConfig(method=method, task="phantom-vqa", limit=2, batch_size=2, device="cpu",
                            max_new_tokens=3, output_dir=str(tmp_path / "runs"), attention=False, progress=False,
                            checkpoint_dir=str(tmp_path / "ckpt")))
    assert results["counts"].get("failed", 0) == 0
    assert any((tmp_path / "runs").rglob("predictions.jsonl"))
    if method == "controlmllm":  # η resolved from the backbone (tiny-med-llava: 1) and recorded
        assert results["method_args"]["decoding"]["lr"] == 1.0
