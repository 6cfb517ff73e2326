"""Fuzzing ``--config``: random YAML gives ConfigError or a well-typed RunConfig."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import typing
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medbench.cli_commands.common import RUN_FLAGS, build_run_config
from medbench.errors import ConfigError
from medbench.run_config import RunConfig, _fits_type

FUZZ = settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=15), st.sampled_from(["greedy", "phantom-vqa", "0/2", "3/2", "x/y", "auto"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=3), max_leaves=6)
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from([f.replace("_", "-") for f in FIELDS]), st.text(max_size=8))
mappings = st.dictionaries(keys, values, max_size=6)
documents = st.one_of(
    mappings.map(lambda m: yaml.safe_dump(m, allow_unicode=True).encode("utf-8")),
    st.builds(lambda m: yaml.safe_dump({"method": "greedy", "task": "phantom-vqa", **m}).encode(), mappings),
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
    st.sampled_from([b"[" * 3000, b"- " * 2000, b"&a [*a]", b"!!python/object:os.system {}", b"method: [", b"\xff"]),
)


def _namespace(path: Path) -> argparse.Namespace:
    return argparse.Namespace(config=str(path), method_args=None, quiet=False, **dict.fromkeys(RUN_FLAGS))


@FUZZ
@given(doc=documents)
def test_config_reader(doc: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_bytes(doc)
        try:
            cfg = build_run_config(_namespace(path))
        except ConfigError:
            return
    assert isinstance(cfg, RunConfig)
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(cfg):
        assert _fits_type(getattr(cfg, f.name), hints[f.name]), f.name
    assert cfg.batch_size >= 1 and cfg.method and cfg.task
