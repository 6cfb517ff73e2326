"""The run fingerprint: a rerun resumes only the configuration that wrote the predictions.

Each member of the fingerprint that the command line can change (seed, max new tokens, attention
capture, the sample list) is changed alone on a finished run; the rerun must refuse with exit
status 1 and leave the predictions file as it was. The same command resumes (decodes nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, write_slake

from medbench.cli import main
from medbench.predictions import read_rows

pytestmark = pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")

BASE = {"--limit": "2", "--max-new-tokens": "2", "--seed": "0"}


def command(data_root: Path, out: Path, changes: dict[str, str | None]) -> list[str]:
    options = {**BASE, **changes}
    args = ["-q", "run", "--method", "greedy", "--task", "slake", "--data-root", str(data_root),
            "--output-dir", str(out), "--device", "cpu"]
    for flag, value in options.items():
        args += [flag] if value is None else [flag, value]
    return args


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("fingerprint")
    data_root, out = write_slake(tmp / "data"), tmp / "runs"
    assert main(command(data_root, out, {})) == 0
    pred = out / "tiny-med-llava" / "slake" / "none+greedy" / "predictions.jsonl"
    _, rows = read_rows(pred)
    assert [r["id"] for r in rows] == ["slake-test-10", "slake-test-11"]
    return data_root, out, pred


def test_the_same_command_resumes_without_decoding(finished):
    data_root, out, pred = finished
    before = pred.read_bytes()
    assert main(command(data_root, out, {})) == 0
    assert pred.read_bytes() == before


@pytest.mark.parametrize("changes", [
    {"--seed": "1"},
    {"--max-new-tokens": "3"},
    {"--no-attention": None},
    {"--limit": "1"},
], ids=["seed", "max-new-tokens", "attention", "sample-list"])
def test_a_changed_member_refuses_to_resume(finished, changes, capsys):
    data_root, out, pred = finished
    before = pred.read_bytes()
    capsys.readouterr()
    assert main(command(data_root, out, changes)) == 1
    assert "different configuration" in capsys.readouterr().err
    assert pred.read_bytes() == before
