"""Runs and trainings with ``--image-root``: the recorded image root is what ``score`` and ``show`` reopen
the task with, and ``train`` takes the flag (and ``--config``'s ``image_root:``) as ``run`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_datasets import TINY_WEIGHTS, run_tiny, write_omnimedvqa
from PIL import Image

from medbench.cli import main
from medbench.registry import open_task
from medbench.task import DataRootError

pytestmark = pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")


def split_roots(tmp_path: Path) -> tuple[Path, Path]:
    """The CARES OmniMedVQA file in one folder, the release's ``Images/`` in another."""
    release = write_omnimedvqa(tmp_path / "release")
    cares = tmp_path / "cares"
    cares.mkdir()
    (release / "omnimedvqa_factuality.jsonl").rename(cares / "omnimedvqa_factuality.jsonl")
    return cares, release


def test_open_task_takes_the_image_root(tmp_path: Path) -> None:
    cares, release = split_roots(tmp_path)
    with pytest.raises(DataRootError, match="Images"):  # without it the images are not found
        open_task("omnimedvqa", cares).load("test")
    task = open_task("omnimedvqa", cares, image_root=release)
    assert task.image_root == release
    assert all(s.image_path.startswith(str(release)) for s in task.load("test"))
    with pytest.raises(DataRootError, match="reads its images from its data root"):
        open_task("vqa-rad", cares, image_root=release)


def _add_attention(run_dir: Path, sample_id: str, image_path: str) -> None:
    """Give one prediction an attention map (OmniMedVQA has no RoIs, so its runs capture none)."""
    grid_size = int(json.loads((run_dir / "run.json").read_text())["geometry"]["grid_size"])
    with Image.open(image_path) as im:
        size = list(im.size)
    path = run_dir / "predictions.jsonl"
    lines = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if obj.get("id") == sample_id:
            obj["attention"] = {"grid_size": grid_size, "grid": [1.0 / grid_size**2] * grid_size**2,
                                "image_size": size}
        lines.append(json.dumps(obj))
    path.write_text("\n".join(lines) + "\n")


def test_score_and_show_a_run_made_with_image_root(tmp_path: Path, capsys) -> None:
    cares, release = split_roots(tmp_path)
    first = run_tiny("omnimedvqa", cares, tmp_path / "runs", "--image-root", str(release))
    run_dir = Path(first["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["config"]["image_root"] == str(release)
    assert first["data"]["provenance"]["image_root"] == str(release)
    capsys.readouterr()

    (run_dir / "results.json").unlink()
    assert main(["-q", "score", str(run_dir), "--json"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["metrics"] == first["metrics"]
    assert rescored["counts"]["planned"] == first["counts"]["planned"] == 2
    assert rescored["counts"]["mc"] == 2 and "closed" not in rescored["counts"]
    assert rescored["data"]["provenance"]["image_root"] == str(release)

    sample = sorted(open_task("omnimedvqa", cares, image_root=release).load("test"), key=lambda s: s.id)[0]
    # the task opens at the recorded image root; the run itself captured no attention map
    assert main(["-q", "show", str(run_dir), "--sample", sample.id]) == 2
    assert "has no attention map" in capsys.readouterr().err
    _add_attention(run_dir, sample.id, sample.image_path)
    png = tmp_path / "show.png"
    assert main(["-q", "show", str(run_dir), "--sample", sample.id, "--output", str(png)]) == 0
    assert png.is_file() and str(png) in capsys.readouterr().out


def _adapter(ckpt: Path) -> Path:
    (found,) = [p.parent for p in ckpt.rglob("COMPLETE")]
    return found


TRAIN = ["--method", "lora", "--task", "omnimedvqa", "--device", "cpu",
         "--method-args", "train_limit=2", "epochs=1", "batch_size=2", "r=4"]


def test_train_takes_image_root_flag_and_config_key(tmp_path: Path, capsys) -> None:
    cares, release = split_roots(tmp_path)
    ckpt = tmp_path / "ckpt"
    assert main(["-q", "train", *TRAIN, "--data-root", str(cares), "--checkpoint-dir", str(ckpt)]) == 1
    assert "Images" in capsys.readouterr().err  # the images are not under the data root
    assert main(["-q", "train", *TRAIN, "--data-root", str(cares), "--image-root", str(release),
                 "--checkpoint-dir", str(ckpt)]) == 0
    assert (_adapter(ckpt) / "COMPLETE").is_file()
    assert str(_adapter(ckpt)) in capsys.readouterr().out

    config = tmp_path / "train.yaml"
    config.write_text(f"data_root: {cares}\nimage_root: {release}\ncheckpoint_dir: {tmp_path / 'ckpt2'}\n")
    assert main(["-q", "train", *TRAIN, "--config", str(config)]) == 0
    assert (_adapter(tmp_path / "ckpt2") / "COMPLETE").is_file()
    # the flag overrides the file's image_root
    config.write_text(f"data_root: {cares}\nimage_root: {tmp_path / 'nowhere'}\n"
                      f"checkpoint_dir: {tmp_path / 'ckpt3'}\n")
    assert main(["-q", "train", *TRAIN, "--config", str(config)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["-q", "train", *TRAIN, "--config", str(config), "--image-root", str(release)]) == 0
    # a task that reads its images from its data root refuses an image root, as `run` does
    assert main(["-q", "train", "--method", "lora", "--task", "vqa-rad", "--data-root", str(cares),
                 "--image-root", str(release), "--checkpoint-dir", str(ckpt)]) == 1
    assert "--image-root is for tasks whose images live in another folder" in capsys.readouterr().err
