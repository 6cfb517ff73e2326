"""Third-party plugins: a decoding method and a task, shipped as an installed distribution with
``medbench.methods``/``medbench.tasks`` entry points, run end to end through ``medbench run``.

The plugin distribution is written into a temporary directory (the package plus a ``dist-info``
with ``entry_points.txt``) and put on the path; no medbench file is edited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medbench import registry as R

PLUGIN_METHODS = '''
"""A decoding method from outside medbench: greedy with a repetition penalty (CTRL-style)."""

import dataclasses
from typing import ClassVar

import torch

from medbench.engine import StepwiseDecoding
from medbench.method import Range


@dataclasses.dataclass(frozen=True)
class NoRepeatParams:
    RANGES: ClassVar[dict] = {"penalty": Range(1.0, 10.0)}
    penalty: float = 1.5


class NoRepeatGreedy(StepwiseDecoding):
    name = "norepeat-greedy"
    label = "NoRepeat"
    Params = NoRepeatParams

    def process(self, scores, history, step):
        if history.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, history)
        penalised = torch.where(seen > 0, seen / self.params.penalty, seen * self.params.penalty)
        return scores.scatter(1, history, penalised)

    def select(self, scores, generators):
        return scores.argmax(dim=-1)


class NotAMethod:
    name = "broken-method"
'''

PLUGIN_TASKS = '''
"""A task from outside medbench: is there a bright square, and where (with its RoI)."""

from pathlib import Path

from medbench.task import Task
from medbench.types import AnswerType, RoI, Sample


class SquaresVQA(Task):
    name = "squares-vqa"
    kind = "vqa"
    embedded = True
    version = "1"
    metric_protocol = "llava_med"

    def load(self, split):
        from PIL import Image, ImageDraw

        root = Path(self.data_root) / split
        root.mkdir(parents=True, exist_ok=True)
        samples = []
        for i in range(6):
            path = root / f"img{i}.png"
            box = (8 + 6 * i, 10 + 4 * i, 40 + 6 * i, 42 + 4 * i)
            if not path.exists():
                im = Image.new("RGB", (96, 96), (20, 20, 20))
                if i % 2 == 0:
                    ImageDraw.Draw(im).rectangle(box, fill=(240, 240, 240))
                im.save(path)
            present = i % 2 == 0
            samples.append(Sample(
                id=f"sq-{split}-{i}", image_path=str(path), question="Is there a bright square in the image?",
                answer="yes" if present else "no", answer_type=AnswerType.CLOSED, split=split,
                roi=RoI(boxes=(tuple(float(v) for v in box),)) if present else None))
            samples.append(Sample(
                id=f"sq-{split}-{i}-open", image_path=str(path), question="What shape is bright?",
                answer="square", answer_type=AnswerType.OPEN, split=split))
        return sorted(samples, key=lambda s: s.id)
'''

PLUGIN_COMMANDS = '''
"""A subcommand from outside medbench: count a task's samples by answer type."""

import collections


def add_parser(sub):
    p = sub.add_parser("count-answers", help="count a task's samples by answer type")
    p.add_argument("--task", required=True)
    p.add_argument("--data-root", required=True)
    p.set_defaults(func=run)


def run(args):
    from medbench.registry import TASKS

    task = TASKS.get(args.task)(data_root=args.data_root)
    counts = collections.Counter(s.answer_type.value for s in task.load("test"))
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0
'''

BROKEN_COMMANDS = '''
raise RuntimeError("this plugin's command module is broken")
'''

ENTRY_POINTS = """\
[medbench.methods]
norepeat-greedy = mb_demo_plugin.methods:NoRepeatGreedy
broken-method = mb_demo_plugin.methods:NotAMethod
greedy = mb_demo_plugin.methods:NoRepeatGreedy

[medbench.tasks]
squares-vqa = mb_demo_plugin.tasks:SquaresVQA

[medbench.commands]
count-answers = mb_demo_plugin.commands
run = mb_demo_plugin.commands
broken-command = mb_demo_plugin.broken_commands
"""


def write_plugin(root: Path) -> Path:
    """An installed-looking distribution ``mb-demo-plugin`` under ``root`` (a sys.path entry)."""
    pkg = root / "mb_demo_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "methods.py").write_text(textwrap.dedent(PLUGIN_METHODS))
    (pkg / "tasks.py").write_text(textwrap.dedent(PLUGIN_TASKS))
    (pkg / "commands.py").write_text(textwrap.dedent(PLUGIN_COMMANDS))
    (pkg / "broken_commands.py").write_text(textwrap.dedent(BROKEN_COMMANDS))
    info = root / "mb_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "site")


@pytest.fixture
def clean_registries():
    """Restore the global registries (and imported plugin modules) after an in-process test."""
    saved = {reg: (dict(reg._entries), dict(reg._loaded), set(reg._pending)) for reg in R.PLUGIN_GROUPS.values()}
    yield
    for reg, (entries, loaded, pending) in saved.items():
        reg._entries, reg._loaded, reg._pending = entries, loaded, pending
    for mod in [m for m in sys.modules if m.startswith("mb_demo_plugin")]:
        del sys.modules[mod]


def _medbench(args: list[str], plugin_root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_root), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "medbench", "-q", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)


def test_load_plugins_registers_with_the_class_kind(plugin_path, monkeypatch, clean_registries, caplog):
    R.load_plugins()
    assert "norepeat-greedy" not in R.METHODS  # not installed yet
    monkeypatch.syspath_prepend(str(plugin_path))
    added = R.load_plugins()  # sys.path changed: scanned again
    assert sorted(added) == ["medbench.methods:broken-method", "medbench.methods:norepeat-greedy",
                             "medbench.tasks:squares-vqa"]
    assert "is already registered" in caplog.text  # the plugin's "greedy" does not replace the built-in
    assert R.METHODS.entry("greedy").plugin is None
    assert R.METHODS.get("greedy").__module__ == "medbench.methods.greedy"
    entry = R.METHODS.entry("norepeat-greedy")
    assert entry.info == {"kind": "decoding", "label": "NoRepeat", "plugin": "mb-demo-plugin"}
    assert R.TASKS.entry("squares-vqa").info == {"kind": "vqa", "embedded": True, "plugin": "mb-demo-plugin"}
    with pytest.raises(R.PluginError, match="broken-method.*mb-demo-plugin.*is not a Method"):
        R.METHODS.get("broken-method")
    assert R.load_plugins() == []  # same sys.path: no second scan
    assert R.load_plugins(force=True) == []  # a second scan registers nothing twice
    from medbench.regression import Suite

    assert not {e.decoding for e in Suite().entries()} & {"norepeat-greedy", "broken-method"}  # not in baselines


def test_runner_routes_a_plugin_method_by_its_class_kind(plugin_path, monkeypatch, clean_registries):
    from medbench.runner import RunConfig, resolve_methods

    monkeypatch.syspath_prepend(str(plugin_path))
    R.load_plugins()
    res = resolve_methods(RunConfig(method="norepeat-greedy", task="squares-vqa", tuning="lora",
                                    method_args={"penalty": "2", "tuning.epochs": "1"}))
    assert (res.tuning, res.decoding, res.decoding_args) == ("lora", "norepeat-greedy", {"penalty": "2"})
    from medbench.method import MethodArgsError

    with pytest.raises(MethodArgsError, match="penalty must be in"):
        resolve_methods(RunConfig(method="norepeat-greedy", task="squares-vqa", method_args={"penalty": "0.5"}))


def test_list_shows_plugins(plugin_path, tmp_path):
    out = _medbench(["list", "methods", "--json"], plugin_path, tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["norepeat-greedy"] == {"name": "norepeat-greedy", "kind": "decoding", "label": "NoRepeat",
                                       "plugin": "mb-demo-plugin"}
    assert "plugin" not in rows["greedy"]
    assert "broken-method" not in rows and "broken-method" in out.stderr


def test_broken_plugin_is_a_clear_error(plugin_path, tmp_path):
    out = _medbench(["run", "--method", "broken-method", "--task", "squares-vqa"], plugin_path, tmp_path)
    assert out.returncode == 2
    assert "broken-method" in out.stderr and "is not a Method" in out.stderr and "Traceback" not in out.stderr


def test_plugin_method_and_task_run_end_to_end(plugin_path, tmp_path):
    out_dir = tmp_path / "runs"
    args = ["run", "--method", "norepeat-greedy", "--task", "squares-vqa", "--data-root", str(tmp_path / "data"),
            "--output-dir", str(out_dir), "--device", "cpu", "--batch-size", "4", "--json",
            "--method-args", "penalty=1.2"]
    out = _medbench(args, plugin_path, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    assert (results["task"], results["decoding"], results["tuning"]) == ("squares-vqa", "norepeat-greedy", "none")
    assert results["method_args"]["decoding"] == {"penalty": 1.2}
    assert results["counts"]["scored"] == 12 and results["counts"].get("failed", 0) == 0
    for metric in ("closed_accuracy", "open_recall", "coverage", "intensity"):
        assert 0.0 <= results["metrics"][metric] <= 1.0, metric
    run_dir = Path(results["run_dir"])
    assert run_dir.parent == out_dir / "tiny-med-llava" / "squares-vqa"
    assert run_dir.name.startswith("none+norepeat-greedy-")
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) >= 12
    # the result files feed the tables like any built-in's
    table = _medbench(["table", "--table", "vqa", "--results", str(out_dir), "--format", "json"], plugin_path,
                      tmp_path)
    assert table.returncode == 0, table.stderr
    (row,) = json.loads(table.stdout)["rows"]
    assert row["decoding"] == "norepeat-greedy" and "squares-vqa/closed_accuracy" in row["cells"]
    assert row["method"].startswith("NoRepeat")  # the label the plugin class declares


def test_plugin_provides_a_subcommand(plugin_path, tmp_path):
    out = _medbench(["count-answers", "--task", "squares-vqa", "--data-root", str(tmp_path / "data")],
                    plugin_path, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["closed=6", "open=6"]
    # the plugin's "run" does not replace medbench's, and a broken command module is left out with a warning
    assert "plugin command 'run' from mb-demo-plugin ignored" in out.stderr
    assert "plugin command 'broken-command' from mb-demo-plugin ignored" in out.stderr
    assert "this plugin's command module is broken" in out.stderr and "Traceback" not in out.stderr
    helptext = _medbench(["--help"], plugin_path, tmp_path)
    assert helptext.returncode == 0 and "count-answers" in helptext.stdout
    run_help = _medbench(["run", "--help"], plugin_path, tmp_path)
    assert run_help.returncode == 0 and "--method" in run_help.stdout
    broken = _medbench(["broken-command"], plugin_path, tmp_path)
    assert broken.returncode == 2 and "invalid choice" in broken.stderr
