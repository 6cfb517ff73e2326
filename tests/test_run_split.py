"""``medbench run --split``: choosing hyperparameters on ``val`` without touching test.

A val run decodes val samples, lives in its own ``@val`` directory with its own fingerprint, records
its split in results.json, is rescored from it, and stays out of the paper tables (with a warning).
The training split is refused.
"""

from __future__ import annotations

import json
import warnings

import pytest

from medbench.cli import main
from medbench.errors import ConfigError
from medbench.registry import TASKS
from medbench.runner import RunConfig, eval_split, resolve_methods, run_dir_for
from medbench.scoring import score_run
from medbench.tables import collect_results


def test_split_names_the_run_directory_and_default_split_is_the_test_run():
    base = RunConfig(method="greedy", task="phantom-vqa", output_dir="out")
    val = RunConfig(method="greedy", task="phantom-vqa", output_dir="out", split="val")
    assert run_dir_for(base, resolve_methods(base)).name == "none+greedy"
    assert run_dir_for(val, resolve_methods(val)).name == "none+greedy@val"


def test_training_and_unknown_splits_are_refused():
    task = TASKS.get("phantom-vqa")()
    assert eval_split(task, None) == "test" and eval_split(task, "test") == "test"
    assert eval_split(task, "val") == "val"
    with pytest.raises(ConfigError, match="trained on"):
        eval_split(task, "train")
    with pytest.raises(ConfigError, match="trained on"):
        eval_split(task, "pretrain")
    with pytest.raises(ConfigError, match="no split 'dev'.*val"):
        eval_split(task, "dev")


def test_val_run_decodes_val_and_stays_out_of_tables(tmp_path, capsys):
    out = tmp_path / "runs"
    common = ["-q", "run", "--method", "greedy", "--task", "phantom-vqa", "--limit", "3", "--output-dir", str(out),
              "--json"]
    assert main([*common, "--split", "val"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert main(common) == 0
    test = json.loads(capsys.readouterr().out)
    assert (val["split"], test["split"]) == ("val", "test")
    assert val["fingerprint"] != test["fingerprint"]
    val_dir = out / "tiny-med-llava" / "phantom-vqa" / "none+greedy@val"
    rows = [json.loads(line) for line in (val_dir / "predictions.jsonl").read_text().splitlines()[1:]]
    val_ids = sorted(s.id for s in TASKS.get("phantom-vqa")().load("val"))[:3]
    assert sorted(r["id"] for r in rows) == val_ids
    rescored = score_run(val_dir)  # reopened from run.json: the val samples again, not test's
    assert rescored["split"] == "val" and rescored["metrics"] == val["metrics"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = collect_results(out)
    assert [r["split"] for r in kept] == ["test"]
    assert any("val split" in str(w.message) for w in caught)
