"""Registry lookups, did-you-mean errors and the CLI's listing and exit codes."""

from __future__ import annotations

import json

import pytest

from medbench.cli import main
from medbench.registry import BACKBONES, METHODS, TASKS, Registry, UnknownNameError


def test_unknown_name_suggests_nearest():
    with pytest.raises(UnknownNameError) as info:
        METHODS.entry("gredy")
    assert "Did you mean 'greedy'" in str(info.value)
    assert "nucleus" in str(info.value)


def test_duplicate_and_frozen_registry():
    reg: Registry = Registry("thing")
    reg.add("a", "x:y")
    with pytest.raises(ValueError):
        reg.add("a", "x:z")
    reg.freeze()
    with pytest.raises(RuntimeError):
        reg.add("b", "x:y")


def test_base_class_check():
    reg: Registry = Registry("task", lambda: int)
    reg.add("bad", "medbench.registry:Registry")
    with pytest.raises(TypeError):
        reg.get("bad")


@pytest.mark.parametrize("name", ["greedy", "beam", "nucleus", "lora"])
def test_core_methods_load(name):
    cls = METHODS.get(name)
    assert cls.name == name
    assert cls.kind == METHODS.entry(name).info["kind"]


def test_phantom_tasks_registered():
    assert TASKS.get("phantom-vqa").kind == "vqa"
    assert TASKS.get("phantom-report").kind == "report"
    assert "tiny-med-llava" in BACKBONES


def test_cli_unknown_method_exit_2(capsys):
    assert main(["run", "--method", "gredy", "--task", "phantom-vqa"]) == 2
    assert "did you mean 'greedy'" in capsys.readouterr().err.lower()


def test_cli_unknown_task_exit_2(capsys):
    assert main(["run", "--method", "greedy", "--task", "phantom-vq"]) == 2
    assert "phantom-vqa" in capsys.readouterr().err


@pytest.mark.parametrize("what,kinds", [("methods", {"decoding", "tuning"}), ("tasks", {"vqa", "report"})])
def test_list_json(capsys, what, kinds):
    assert main(["list", what, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == kinds
    assert all("name" in r for r in rows)
    if what == "tasks":
        assert {r["name"]: r["embedded"] for r in rows}["phantom-vqa"] is True


def test_bad_method_args_exit_2(capsys):
    code = main(["run", "--method", "nucleus", "--task", "phantom-vqa", "--method-args", "top_q=0.5"])
    assert code == 2
    assert "did you mean 'top_p'" in capsys.readouterr().err


def test_config_file_flags_override(tmp_path):
    from medbench.cli import build_parser
    from medbench.cli_commands.common import build_run_config

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("method: nucleus\ntask: phantom-vqa\nlimit: 5\nbatch-size: 4\nmethod_args:\n  top_p: 0.5\n")
    args = build_parser().parse_args(["run", "--config", str(cfg_file), "--limit", "7"])
    cfg = build_run_config(args)
    assert (cfg.method, cfg.limit, cfg.batch_size, cfg.method_args) == ("nucleus", 7, 4, {"top_p": 0.5})


def test_config_unknown_key(tmp_path, capsys):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("method: greedy\ntask: phantom-vqa\nbogus: 1\n")
    assert main(["run", "--config", str(cfg_file)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "medbench run --method" in out


def test_builtin_registry_info_matches_the_classes():
    """Built-in entries state kind/embedded so that listing imports nothing; they must agree with the classes."""
    from medbench.registry import _method_info, _task_info

    for name in METHODS.names():
        assert METHODS.entry(name).info == _method_info(METHODS.get(name)), name
        assert METHODS.entry(name).plugin is None
    for name in TASKS.names():
        cls = TASKS.get(name)
        assert TASKS.entry(name).info == _task_info(cls), name
