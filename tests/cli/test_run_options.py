"""``medbench run`` options: a ``--config`` file's booleans survive the CLI, and one run directory per
parsed method-argument setting (as the fingerprint sees it)."""

from __future__ import annotations

import json

import pytest

from medbench.cli import main
from medbench.runner import RunConfig, resolve_methods, run_dir_for


@pytest.fixture
def captured(monkeypatch):
    """``medbench run`` with the runner replaced by a recorder of the RunConfig it receives."""
    seen: list[RunConfig] = []

    def fake_run(cfg: RunConfig) -> dict:
        seen.append(cfg)
        return {"fake": True}

    monkeypatch.setattr("medbench.runner.run", fake_run)
    return seen


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text("method: greedy\ntask: phantom-vqa\n" + text)
    return str(path)


def test_config_attention_false_and_allow_failures_true_survive(tmp_path, captured, capsys):
    config = _yaml(tmp_path, "attention: false\nallow_failures: true\n")
    assert main(["run", "--config", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"fake": True}
    (cfg,) = captured
    assert cfg.attention is False
    assert cfg.allow_failures is True


def test_config_defaults_kept_without_flags(tmp_path, captured):
    assert main(["run", "--config", _yaml(tmp_path, ""), "--json"]) == 0
    assert (captured[0].attention, captured[0].allow_failures) == (True, False)


def test_flags_still_override_the_config(tmp_path, captured):
    config = _yaml(tmp_path, "attention: true\nallow_failures: false\n")
    assert main(["run", "--config", config, "--no-attention", "--allow-failures", "--json"]) == 0
    assert (captured[0].attention, captured[0].allow_failures) == (False, True)


def _dir(method: str, args: dict, **kw) -> str:
    cfg = RunConfig(method=method, task="phantom-vqa", method_args=args, output_dir="out", **kw)
    return run_dir_for(cfg, resolve_methods(cfg)).name


def test_run_dir_hashes_parsed_values_not_spelling():
    assert _dir("nucleus", {"top_p": "0.8"}) == _dir("nucleus", {"top_p": "0.80"}) == _dir("nucleus", {"top_p": 0.8})
    assert _dir("nucleus", {"top_p": "0.8"}).startswith("none+nucleus-")
    assert _dir("nucleus", {"top_p": "0.8"}) != _dir("nucleus", {"top_p": "0.7"})
    assert _dir("nucleus", {"top_p": "0.8", "temperature": "1"}) == _dir("nucleus", {"top_p": "0.8"})


def test_run_dir_at_defaults_is_the_plain_directory():
    # top_p=0.9 is nucleus's default: the same fingerprint as no argument, so the same directory
    assert _dir("nucleus", {"top_p": "0.90"}) == _dir("nucleus", {}) == "none+nucleus"


def test_run_dir_alias_and_prefix_are_one_setting():
    by_alias = _dir("a3tune", {"lambda": "0.2"})
    assert by_alias == _dir("a3tune", {"lam": "0.20"}) == _dir("a3tune", {"tuning.lam": "0.2"})
    assert by_alias.startswith("a3tune+greedy-")
    assert by_alias != _dir("a3tune", {"lam": "0.3"})
    # operational arguments never name a directory
    assert _dir("lora", {"checkpoint_every": "5"}) == "lora+greedy"
