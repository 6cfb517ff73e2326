"""The generic ``--method-args`` parser (typed from strings) and the routing of arguments between a
tuning and a decoding method. (Each registered method's own parameters: test_decoding_params.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from medbench.method import MethodArgsError, parse_method_args, parse_params
from medbench.runner import RunConfig, resolve_methods


@dataclass(frozen=True)
class P:
    a: int = 1
    b: float = 0.5
    c: bool = False
    d: Literal["x", "y"] = "x"
    e: tuple[int, ...] = ()
    f: int | None = None


def test_types_coerced():
    p = parse_params(P, {"a": "3", "b": "1e-3", "c": "true", "d": "y", "e": "1,2", "f": "none"})
    assert p == P(3, 1e-3, True, "y", (1, 2), None)


@pytest.mark.parametrize("bad", [{"a": "x"}, {"c": "maybe"}, {"d": "z"}, {"zzz": "1"}])
def test_bad_values_raise(bad):
    with pytest.raises(MethodArgsError):
        parse_params(P, bad)


def test_parse_method_args_pairs():
    assert parse_method_args(["a=1", "b=x,y"]) == {"a": "1", "b": "x,y"}
    with pytest.raises(MethodArgsError):
        parse_method_args(["novalue"])


def test_routing_tuning_and_decoding():
    res = resolve_methods(RunConfig(method="nucleus", task="phantom-vqa", tuning="lora",
                                    method_args={"top_p": "0.8", "r": "8", "tuning.lr": "1e-3"}))
    assert res.tuning == "lora" and res.decoding == "nucleus"
    assert res.decoding_args == {"top_p": "0.8"}
    assert res.tuning_args == {"r": "8", "lr": "1e-3"}
    res = resolve_methods(RunConfig(method="vcd", task="phantom-vqa", tuning="lora",
                                    method_args={"decoding.alpha": "0.5", "r": "8", "noise_step": "999"}))
    assert res.decoding_args == {"alpha": "0.5", "noise_step": "999"} and res.tuning_args == {"r": "8"}
    with pytest.raises(MethodArgsError, match="fits both"):  # vcd and lora both have an alpha
        resolve_methods(RunConfig(method="vcd", task="phantom-vqa", tuning="lora", method_args={"alpha": "0.5"}))


def test_tuning_method_defaults_to_greedy():
    res = resolve_methods(RunConfig(method="lora", task="phantom-vqa"))
    assert (res.tuning, res.decoding) == ("lora", "greedy")


def test_conflicting_decoding_refused():
    with pytest.raises(MethodArgsError):
        resolve_methods(RunConfig(method="greedy", task="phantom-vqa", decoding="beam"))

