"""Without the ``weak-labels`` extra, ``segmenter=sam`` / ``scorer=biomedclip`` end in one ``medbench: error:``
line (exit 2) that names the extra to install, not an ImportError traceback.

A ``sys.modules`` entry set to None is how Python marks a module unimportable: ``import`` of it raises
ModuleNotFoundError, as when the package is not installed. Nothing is uninstalled.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS

from medbench.cli import main
from medbench.errors import EXTRA_MODULES, missing_extra

INSTALL = "pip install -e '.[weak-labels]'"
tiny = pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medbench: error: ") and "Traceback" not in err
    for needle in (INSTALL, *needles):
        assert needle in lines[0], lines[0]
    return lines[0]


def _a3tune(command: str, tmp_path: Path, *method_args: str) -> list[str]:
    argv = ["-q", command, "--method", "a3tune", "--task", "phantom-vqa", "--device", "cpu",
            "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--method-args", "train_limit=2", "epochs=1", "batch_size=2", *method_args]
    if command == "run":
        argv += ["--limit", "1", "--max-new-tokens", "2", "--output-dir", str(tmp_path / "runs")]
    return argv


@pytest.fixture
def sam_file(tmp_path: Path) -> Path:
    path = tmp_path / "sam_vit_b_01ec64.pth"  # never read: the import fails first
    path.write_bytes(b"not read")
    return path


@tiny
@pytest.mark.parametrize(("command", "module", "dist"), [
    ("run", "segment_anything", "segment-anything"),
    ("train", "cv2", "opencv-python-headless"),
])
def test_sam_without_the_extra(command, module, dist, sam_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)
    assert main(_a3tune(command, tmp_path, "segmenter=sam", f"sam_checkpoint={sam_file}")) == 2
    _one_error_line(capsys.readouterr().err, "segmenter sam needs the weak-labels extra", dist)
    assert not list((tmp_path / "ckpt").rglob("COMPLETE"))


@pytest.mark.parametrize("argv", [
    ["weak-labels", "check", "--sam", "{sam}"],
    ["weak-labels", "build", "--task", "phantom-vqa", "--limit", "1", "--method-args", "segmenter=sam",
     "sam_checkpoint={sam}"],
])
def test_weak_labels_command_without_the_extra(argv, sam_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    assert main(["-q", *[a.format(sam=sam_file) for a in argv]]) == 2
    _one_error_line(capsys.readouterr().err, "segment-anything")


@tiny
def test_biomedclip_without_the_extra(tmp_path, monkeypatch, capsys):
    pytest.importorskip("open_clip")  # to build the folder; then it is made unimportable
    from weak_label_fixtures import write_tiny_biomedclip_download

    from medbench.methods.a3tune.scorers import prepare_biomedclip

    folder = prepare_biomedclip(write_tiny_biomedclip_download(tmp_path / "download"), tmp_path / "biomedclip")
    for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "open_clip", None)
    assert main(_a3tune("train", tmp_path, "scorer=biomedclip", f"biomedclip_dir={folder}")) == 2
    _one_error_line(capsys.readouterr().err, "scorer biomedclip needs the weak-labels extra", "open_clip_torch")


def test_missing_extra_names_only_the_extras_modules():
    for module, (extra, dist) in EXTRA_MODULES.items():
        exc = ModuleNotFoundError(f"No module named {module!r}", name=module)
        message = missing_extra(exc)
        assert message is not None and f"'.[{extra}]'" in message and dist in message
    try:
        try:
            raise ModuleNotFoundError("No module named 'open_clip.tokenizer'", name="open_clip.tokenizer")
        except ImportError as inner:
            raise ImportError("scorer biomedclip needs the weak-labels extra: ...") from inner
    except ImportError as outer:
        assert missing_extra(outer).startswith("scorer biomedclip needs the weak-labels extra: open_clip_torch")
    # any other import error is a bug, not a missing extra: it keeps its traceback
    assert missing_extra(ModuleNotFoundError("No module named 'numpyy'", name="numpyy")) is None
    assert missing_extra(ImportError("cannot import name 'x'")) is None


def test_cli_reraises_other_import_errors(monkeypatch):
    import medbench.cli_commands.score_cmd as score_cmd

    def broken(args):
        raise ModuleNotFoundError("No module named 'not_an_extra'", name="not_an_extra")

    monkeypatch.setattr(score_cmd, "main", broken)
    with pytest.raises(ModuleNotFoundError, match="not_an_extra"):
        main(["-q", "score", "somewhere"])
