"""Run input is validated before any model loads or any sample is decoded.

* repeated ``--method-args`` flags add up; one name given twice (in the flags, in one YAML source,
  or spelled two ways that route to the same method) is an error, while flags still override the
  YAML file;
* NaN, infinite and out-of-range method arguments are refused by the one range mechanism
  (``Params.RANGES``), layer indices beyond the backbone's depth once it is loaded;
* YAML ``method_args`` values go through the same typed parsing as command-line strings;
* ``--limit`` and ``train_limit`` are positive counts (left out: every sample).

Refusals are ``medbench: error:`` lines with exit code 2. The command-line cases point ``--task
vqa-rad`` at a missing data root: validating after the task (or the model) loads would fail there
with exit code 1 instead.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest
from decoding_fixtures import SEEDS, encode, shared_backbone
from fixtures_datasets import write_vqa_rad

from medbench.cli import build_parser, main
from medbench.cli_commands.common import build_run_config
from medbench.errors import ConfigError
from medbench.method import MethodArgsError, parse_params
from medbench.registry import METHODS
from medbench.runner import RunConfig, resolve_methods, run

DECODERS = sorted(n for n in METHODS.names() if METHODS.entry(n).info["kind"] == "decoding")


def cli(tmp_path: Path, capsys, *argv: str) -> tuple[int, str]:
    """``medbench run`` on a missing data root; returns (exit code, stderr)."""
    command = argv[0] if argv and argv[0] in ("run", "train") else "run"
    rest = argv[1:] if argv and argv[0] in ("run", "train") else argv
    code = main([command, "--task", "vqa-rad", "--data-root", str(tmp_path / "no-data"),
                 "--output-dir", str(tmp_path / "runs"), "--checkpoint-dir", str(tmp_path / "ckpt"), *rest])
    err = capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ckpt").exists()
    return code, err


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- 1. --method-args: lists add up, a name twice is an error ---------------------------------


def test_repeated_method_args_flags_add_up() -> None:
    args = build_parser().parse_args(["run", "--method", "nucleus", "--task", "phantom-vqa",
                                      "--method-args", "top_p=0.5", "--method-args", "temperature=0.7"])
    assert build_run_config(args).method_args == {"top_p": "0.5", "temperature": "0.7"}
    for command in (["sweep", "--task", "phantom-vqa", "--param", "lam=0,1"],
                    ["weak-labels", "build", "--task", "phantom-vqa"]):
        parsed = build_parser().parse_args([*command, "--method-args", "a=1", "--method-args", "b=2", "c=3"])
        assert parsed.method_args == ["a=1", "b=2", "c=3"]


@pytest.mark.parametrize("flags", [
    ["--method-args", "top_p=0.5", "--method-args", "top_p=0.7"],
    ["--method-args", "top_p=0.5", "top_p=0.7"],
    ["--method-args", "top_p=0.5 top_p=0.7"],
    ["--method-args", "top_p=0.5", "--method-args", "decoding.top_p=0.7"],
], ids=["two-flags", "one-list", "one-string", "two-spellings"])
def test_same_method_arg_twice_refused(tmp_path: Path, capsys, flags: list[str]) -> None:
    code, err = cli(tmp_path, capsys, "--method", "nucleus", *flags)
    assert code == 2
    assert err.startswith("medbench: error:") and "top_p" in err and "twice" in err


@pytest.mark.parametrize("text", [
    "method: nucleus\nmethod_args: {top_p: 0.5, top_p: 0.7}\n",
    "method: nucleus\nmethod_args: [top_p=0.5, top_p=0.7]\n",
    "method: nucleus\nmethod_args: {top_p: 0.5, decoding.top_p: 0.7}\n",
    "method: nucleus\nmethod: beam\n",
    "method: nucleus\nmethod_args: {top_p: 0.5}\nmethod-args: {temperature: 0.5}\n",
], ids=["mapping", "list", "two-spellings", "top-level", "dash-and-underscore"])
def test_same_key_twice_in_yaml_refused(tmp_path: Path, capsys, text: str) -> None:
    code, err = cli(tmp_path, capsys, "--config", write_yaml(tmp_path, text))
    assert code == 2 and err.startswith("medbench: error:") and "twice" in err


def test_flags_override_yaml_method_args(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "method: lora\ntask: phantom-vqa\ndecoding: nucleus\n"
                                "method_args: {top_p: 0.5, temperature: 0.7, lr: 0.001, decoding.alpha: 1}\n")
    args = build_parser().parse_args(["run", "--config", path, "--method-args", "top_p=0.8",
                                      "--method-args", "tuning.lr=1e-4"])
    cfg = build_run_config(args)
    assert cfg.method_args == {"temperature": 0.7, "decoding.alpha": 1, "top_p": "0.8", "tuning.lr": "1e-4"}


def test_two_spellings_routed_to_one_argument_refused() -> None:
    with pytest.raises(MethodArgsError, match="'lr' of lora given twice"):
        resolve_methods(RunConfig(method="lora", task="phantom-vqa", method_args={"lr": "1e-3", "tuning.lr": "1e-4"}))
    res = resolve_methods(RunConfig(method="lora", task="phantom-vqa", decoding="nucleus",
                                    method_args={"tuning.lr": "1e-3", "decoding.top_p": "0.5"}))
    assert res.tuning_args == {"lr": "1e-3"} and res.decoding_args == {"top_p": "0.5"}
    with pytest.raises(MethodArgsError, match="'lam' of a3tune given twice"):
        resolve_methods(RunConfig(method="a3tune", task="phantom-vqa", method_args={"lam": "0.1", "tuning.lambda": "0.2"}))
    with pytest.raises(MethodArgsError, match="'lam' given twice"):
        METHODS.get("a3tune")(lam="0.1", **{"lambda": "0.2"})
    res = resolve_methods(RunConfig(method="a3tune", task="phantom-vqa", method_args={"tuning.lambda": "0.2"}))
    assert METHODS.get("a3tune")(**res.tuning_args).params.lam == 0.2
    with pytest.raises(MethodArgsError, match="no tuning"):
        resolve_methods(RunConfig(method="nucleus", task="phantom-vqa", method_args={"tuning.lr": "1e-3"}))


# ---- 3. NaN / inf / out of range, layer indices -----------------------------------------------


BAD_VALUES = [
    ("beam", "length_penalty", "nan"), ("beam", "length_penalty", "inf"), ("beam", "num_beams", "1000"),
    ("m3id", "lam", "nan"), ("m3id", "lam", "50"), ("pai", "gamma", "nan"), ("pai", "alpha", "inf"),
    ("vcd", "repetition_penalty", "nan"), ("vcd", "alpha", "1e308"), ("nucleus", "temperature", "nan"),
    ("nucleus", "temperature", "1e-300"), ("nucleus", "temperature", "-inf"), ("nucleus", "top_p", "nan"),
    ("dola", "relative_top", "nan"), ("avisc", "lamb", "nan"), ("damro", "alpha", "-1"),
    ("opera", "scale_factor", "nan"), ("opera", "penalty_weights", "inf"), ("controlmllm", "lr", "nan"),
    ("controlmllm", "stop_ratio", "inf"), ("lora", "lr", "nan"), ("lora", "dropout", "2"),
    ("lora", "epochs", "inf"), ("a3tune", "lam", "nan"), ("a3tune", "moe_balance_coef", "inf"),
]


@pytest.mark.parametrize(("method", "name", "value"), BAD_VALUES, ids=[f"{m}-{n}={v}" for m, n, v in BAD_VALUES])
def test_non_finite_or_absurd_argument_refused(tmp_path: Path, capsys, method: str, name: str, value: str) -> None:
    with pytest.raises(MethodArgsError, match=name):
        METHODS.get(method)(**{name: value})
    code, err = cli(tmp_path, capsys, "--method", method, "--method-args", f"{name}={value}")
    assert code == 2 and err.startswith(f"medbench: error: {name} must be")


def test_minimum_temperature() -> None:
    from medbench.method import MIN_TEMPERATURE

    assert METHODS.get("nucleus")(temperature=str(MIN_TEMPERATURE)).params.temperature == MIN_TEMPERATURE
    for method in ("nucleus", "vcd", "m3id"):
        with pytest.raises(MethodArgsError, match="temperature"):
            METHODS.get(method)(temperature=str(MIN_TEMPERATURE / 2))


def test_avisc_infinite_lambda_keeps_its_meaning() -> None:
    avisc = METHODS.get("avisc")
    assert avisc(lamb="inf").params.lamb == math.inf and avisc(lamb="-inf").params.lamb == -math.inf
    with pytest.raises(MethodArgsError, match="lamb"):
        avisc(lamb="nan")


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_numeric_argument_has_a_range(method: str) -> None:
    """One mechanism: every int/float field is declared in RANGES, and NaN is refused for every one."""
    from medbench.method import numeric_fields, param_ranges

    params_cls = METHODS.get(method).Params
    ranges = param_ranges(params_cls)
    for name, kind in numeric_fields(params_cls).items():
        assert name in ranges, f"{method}.{name} has no Range"
        with pytest.raises(MethodArgsError, match=name):
            parse_params(params_cls, {name: "nan"})
        if kind is float and not ranges[name].allow_inf:
            for value in ("inf", "-inf"):
                with pytest.raises(MethodArgsError, match=name):
                    parse_params(params_cls, {name: value})


@pytest.mark.parametrize(("method", "args", "match"), [
    ("pai", {"end_layer": "100"}, "end_layer must be in \\[1, 4\\]"),
    ("pai", {"start_layer": "4"}, "start_layer must be in \\[0, 3\\]"),
    ("dola", {"candidate_layers": "0,99"}, "candidate layers \\[99\\]"),
    ("dola", {"candidate_layers": "0,4"}, "candidate layers \\[4\\]"),
    ("dola", {"mature_layer": "5"}, "mature_layer"),
    ("dola", {"premature_layer": "5"}, "premature_layer"),
])
def test_layer_indices_checked_against_the_backbone(method: str, args: dict[str, str], match: str) -> None:
    backbone = shared_backbone()
    assert int(backbone.text_config.num_hidden_layers) == 4
    decoder = METHODS.get(method)(**args)
    with pytest.raises(MethodArgsError, match=match):
        decoder.check_backbone(backbone)


def test_layer_indices_within_the_backbone_accepted() -> None:
    backbone = shared_backbone()
    for method, args in (("pai", {"start_layer": "3", "end_layer": "4"}), ("dola", {"candidate_layers": "0,3"}),
                         ("dola", {"mature_layer": "3", "premature_layer": "1"}), ("pai", {})):
        METHODS.get(method)(**args).check_backbone(backbone)


@pytest.mark.parametrize(("method", "arg"), [("pai", "end_layer=100"), ("dola", "candidate_layers=0,99")])
def test_layer_indices_refused_before_decoding(tmp_path: Path, capsys, method: str, arg: str) -> None:
    root = write_vqa_rad(tmp_path / "rad")
    code = main(["-q", "run", "--method", method, "--task", "vqa-rad", "--data-root", str(root), "--device", "cpu",
                 "--output-dir", str(tmp_path / "runs"), "--limit", "1", "--method-args", arg])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("medbench: error:") and ("4 layers" in err or "[0, 3]" in err)
    assert not list((tmp_path / "runs").rglob("predictions.jsonl"))


REFUSED_OR_INSIDE = (math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-300, -1e-300)


def _end(rng: typing.Any, kind: type, n_layers: int, high: bool) -> float | None:
    """The accepted end of a Range on one side (just inside an open end), or None if unbounded."""
    bound = (rng.hi if rng.depth_hi is None else n_layers + rng.depth_hi) if high else rng.lo
    if bound is None:
        return None
    is_open = rng.hi_open if high else rng.lo_open
    step = (1 if kind is int else 1e-6) * (-1 if high else 1)
    return bound + step if is_open else bound


@pytest.mark.parametrize("method", DECODERS)
def test_every_value_refused_or_decoded_without_guard_steps(method: str) -> None:
    """Any value is refused before decoding, or decodes on a healthy model without a NaN/inf guard.

    Non-finite and huge values must be refused or lie inside the declared range; the accepted ends
    of every range are decoded together: all arguments at their low ends, then every float argument
    at its high end (integer high ends only cost time: beams, optimisation steps).
    """
    from medbench.method import numeric_fields, param_ranges

    backbone = shared_backbone()
    samples, images, batch = encode(backbone, 1, roi=True)
    params_cls = METHODS.get(method).Params
    ranges, fields = param_ranges(params_cls), numeric_fields(params_cls)
    n_layers = int(backbone.text_config.num_hidden_layers)
    for name in fields:
        for value in REFUSED_OR_INSIDE:
            try:
                params = parse_params(params_cls, {name: repr(value)})
            except MethodArgsError:
                continue
            got, rng = getattr(params, name), ranges[name]
            assert (math.isinf(got) and rng.allow_inf) or (
                math.isfinite(got) and (rng.lo is None or got >= rng.lo) and (rng.hi is None or got <= rng.hi)), name
    base = {"controlmllm": {"steps": "1"}, "opera": {"num_beams": "2", "num_attn_candidates": "2"},
            "beam": {"num_beams": "2"}}.get(method, {})
    low = {n: _end(ranges[n], k, n_layers, high=False) for n, k in fields.items()}
    high = {n: _end(ranges[n], k, n_layers, high=True) for n, k in fields.items() if k is float}
    for ends in (low, high):
        args = {**base, **{n: repr(int(v) if fields[n] is int else v) for n, v in ends.items() if v is not None}}
        decoder = METHODS.get(method)(**args)
        decoder.check_backbone(backbone)
        decoder.prepare(backbone, samples, images)
        gen = decoder.generate(backbone, batch, SEEDS[:1], 2)
        assert gen.guards == [0], (args, gen.guards)


# ---- 4. YAML values go through the command-line parsing ---------------------------------------


@pytest.mark.parametrize(("method", "yaml_args", "match"), [
    ("vcd", "{selection: 7}", "selection=7: expected one of"),
    ("nucleus", "{top_p: true}", "top_p=True: expected float"),
    ("beam", "{num_beams: 2.5}", "num_beams=2.5: expected int"),
    ("controlmllm", "{early_stop: 3}", "early_stop=3: expected a boolean"),
    ("dola", "{candidate_layers: 7}", "candidate_layers=7: expected a string"),
    ("beam", "{num_beams: null}", "num_beams: a value is required"),
    ("nucleus", "{temperature: .nan}", "temperature must be finite"),
], ids=["literal-int", "float-bool", "int-float", "bool-int", "str-int", "int-null", "float-nan"])
def test_yaml_method_args_typed_like_flags(tmp_path: Path, capsys, method: str, yaml_args: str, match: str) -> None:
    config = write_yaml(tmp_path, f"method: {method}\nmethod_args: {yaml_args}\n")
    code, err = cli(tmp_path, capsys, "--config", config)
    assert code == 2 and err.startswith("medbench: error:")
    assert match in err


def test_yaml_typed_values_accepted_where_they_fit(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "method: nucleus\ntask: phantom-vqa\nmethod_args: {top_p: 0.5, temperature: 1}\n")
    cfg = build_run_config(build_parser().parse_args(["run", "--config", path]))
    nucleus = METHODS.get("nucleus")(**resolve_methods(cfg).decoding_args)
    assert nucleus.params.top_p == 0.5 and nucleus.params.temperature == 1.0
    assert isinstance(nucleus.params.temperature, float)
    assert METHODS.get("controlmllm")(early_stop=False, steps=3).params.early_stop is False
    assert METHODS.get("beam")(num_beams=3).params.num_beams == 3
    assert METHODS.get("m3id")(alpha_conf=None).params.alpha_conf is None


# ---- 5. --limit and train_limit ---------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_limit_must_be_positive(tmp_path: Path, capsys, limit: str) -> None:
    code, err = cli(tmp_path, capsys, "--method", "greedy", "--limit", limit)
    assert code == 2 and err.startswith("medbench: error: limit must be at least 1")
    code, err = cli(tmp_path, capsys, "--config", write_yaml(tmp_path, f"method: greedy\nlimit: {limit}\n"))
    assert code == 2 and "limit must be at least 1" in err
    with pytest.raises(ConfigError, match="limit must be at least 1"):
        run(RunConfig(method="greedy", task="vqa-rad", data_root=str(tmp_path / "no-data"), limit=int(limit),
                      output_dir=str(tmp_path / "runs")))


@pytest.mark.parametrize("method", ["lora", "a3tune"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_train_limit_must_be_positive(tmp_path: Path, capsys, method: str, value: str) -> None:
    with pytest.raises(MethodArgsError, match="train_limit must be ≥ 1"):
        METHODS.get(method)(train_limit=value)
    assert METHODS.get(method)(train_limit="none").params.train_limit is None
    for command in ("run", "train"):
        code, err = cli(tmp_path, capsys, command, "--method", method, "--method-args", f"train_limit={value}")
        assert code == 2 and err.startswith("medbench: error: train_limit must be ≥ 1")

