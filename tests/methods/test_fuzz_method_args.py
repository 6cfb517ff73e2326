"""Fuzzing ``--method-args``: random strings give MethodArgsError or a value of the right type."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medbench.method import MethodArgsError, parse_method_args, parse_params
from medbench.registry import METHODS

FUZZ = settings(derandomize=True, max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRICKY = ["", " ", "=", "==", "a=", "=1", "a==b", "a=b=c", "a=1 b=2", "nan", "inf", "-inf", "1e999", "1_0", "0x10",
          "None", "null", "true", "on", "1,2", ";", ",,", "é=ü", "\x00", "9" * 5000, "a=" + "x" * 10000]
tokens = st.one_of(st.text(max_size=30), st.sampled_from(TRICKY),
                   st.builds(lambda k, v: f"{k}={v}", st.text(max_size=8), st.text(max_size=12)))
PARAM_CLASSES = [METHODS.get(name).Params for name in METHODS.names()]


def _fits(value: typing.Any, annotation: typing.Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        inner = args[0] if args else typing.Any
        return isinstance(value, (tuple, list)) and all(_fits(v, inner) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


@FUZZ
@given(items=st.lists(tokens, max_size=5))
def test_parse_method_args(items: list[str]) -> None:
    try:
        out = parse_method_args(items)
    except MethodArgsError:
        return
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in out.items())


@pytest.mark.parametrize("params_cls", PARAM_CLASSES, ids=lambda c: c.__qualname__)
@settings(derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_params(params_cls: type, data: st.DataObject) -> None:
    names = [f.name for f in dataclasses.fields(params_cls)] + ["not_a_field"]
    overrides = data.draw(st.dictionaries(st.sampled_from(names), st.one_of(st.text(max_size=12), st.sampled_from(TRICKY)),
                                          max_size=3))
    try:
        params = parse_params(params_cls, overrides)
    except MethodArgsError:
        return
    hints = typing.get_type_hints(params_cls)
    for name in overrides:
        assert _fits(getattr(params, name), hints[name]), (name, getattr(params, name), hints[name])
