"""A run whose sample fails: error rows, the exit status, --allow-failures and the retry on resume.

The SLAKE fixture's test question slake-test-11 points at an image whose bytes are replaced by
text, so reading it fails during the run (the loader only checks that the file exists).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, write_image, write_slake

from medbench.cli import main
from medbench.predictions import read_rows

pytestmark = pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")

IDS = ["slake-test-10", "slake-test-11", "slake-test-12"]


def run(data_root: Path, out: Path, *extra: str) -> int:
    return main(["-q", "run", "--method", "greedy", "--task", "slake", "--data-root", str(data_root),
                 "--output-dir", str(out), "--limit", "3", "--max-new-tokens", "2", "--device", "cpu", *extra])


def test_error_rows_exit_status_allow_failures_and_retry(tmp_path: Path, capsys):
    data_root, out = write_slake(tmp_path / "data"), tmp_path / "runs"
    image = data_root / "Slake1.0" / "imgs" / "xmlab2" / "source.jpg"
    image.write_bytes(b"not an image")
    run_dir = out / "tiny-med-llava" / "slake" / "none+greedy"

    assert run(data_root, out) == 1  # a failed sample fails the run
    assert "1 sample(s) failed" in capsys.readouterr().err
    _, rows = read_rows(run_dir / "predictions.jsonl")
    assert [(r["id"], bool(r["error"])) for r in rows] == [(IDS[0], False), (IDS[1], True), (IDS[2], False)]
    assert rows[1]["error"].startswith("image:") and rows[1]["prediction"] == ""
    results = json.loads((run_dir / "results.json").read_text())
    assert [results["counts"][k] for k in ("planned", "scored", "failed", "open", "closed")] == [3, 2, 1, 1, 1]

    assert run(data_root, out, "--allow-failures") == 0  # the error row is retried, fails again, is accepted
    _, rows = read_rows(run_dir / "predictions.jsonl")
    assert [r["id"] for r in rows] == [*IDS, IDS[1]] and rows[3]["error"].startswith("image:")
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["counts"]["scored"], results["counts"]["failed"]) == (2, 1)

    write_image(image, 2)  # the image is fixed: the next resume decodes that sample only
    assert run(data_root, out) == 0
    _, rows = read_rows(run_dir / "predictions.jsonl")
    assert [r["id"] for r in rows] == [*IDS, IDS[1], IDS[1]] and rows[4]["error"] is None
    results = json.loads((run_dir / "results.json").read_text())
    assert [results["counts"][k] for k in ("planned", "scored", "failed", "open", "closed")] == [3, 3, 0, 2, 1]
    per_sample = json.loads((run_dir / "per_sample.json").read_text())
    assert sorted(per_sample["open_recall"]) == [IDS[1], IDS[2]]
