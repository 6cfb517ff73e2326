"""``medbench show``: the Figure 1/6-style PNG of one sample across runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbench.show import ShowError, show, weak_label_segments
from medbench.tasks.phantom import PhantomVQA

GEOMETRY = {"mode": "resize_shortest+center_crop", "shortest_edge": 128, "crop": [128, 128], "grid_size": 8}


@pytest.fixture
def task(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / "cache"))
    return PhantomVQA(n_images={"test": 2})


def _make_run(root: Path, task, tuning: str, *, attention: bool = True, extra: dict | None = None) -> Path:
    """A run directory with run.json and predictions.jsonl for every test sample of ``task``."""
    run = root / "tiny" / task.name / f"{tuning}+greedy"
    run.mkdir(parents=True)
    config = {"task": task.name, "limit": None, "data_root": None, "model": "tiny"}
    (run / "run.json").write_text(json.dumps({"fingerprint": "fp", "config": config, "tuning": tuning,
                                              "decoding": "greedy", "geometry": GEOMETRY}))
    rng = np.random.default_rng(len(tuning))
    lines = [json.dumps({"header": True, "fingerprint": "fp"})]
    for sample in task.load("test"):
        prediction = sample.answer if tuning == "a3tune" else "no"
        row = {"id": sample.id, "prediction": prediction, "answer": sample.answer}
        if attention:
            row["attention"] = {"grid_size": 8, "grid": rng.random(64).tolist(), "image_size": [256, 256]}
        row.update((extra or {}).get(sample.id, {}))
        lines.append(json.dumps(row))
    (run / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _png_size(path: Path) -> tuple[int, int]:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        return im.size


def test_single_run_figure(tmp_path, task):
    run = _make_run(tmp_path / "runs", task, "none")
    sample_id = task.load("test")[0].id
    result = show([run], sample_id, task=task)
    assert result.path == run / "show" / f"{sample_id}.png"
    assert result.panels[1] == "base+greedy" and len(result.panels) == 2
    assert _png_size(result.path) == result.size and result.size[0] == 2 * 300


def test_three_runs_with_weak_labels(tmp_path, task):
    samples = task.load("test")
    segments = np.zeros((2, 64), dtype=bool)
    segments[0, 9:12] = segments[1, 40:43] = True
    runs = [_make_run(tmp_path / "runs", task, "none"), _make_run(tmp_path / "runs", task, "lora"),
            _make_run(tmp_path / "runs", task, "a3tune",
                      extra={samples[1].id: {"weak_labels": segments.astype(int).tolist()}})]
    out = tmp_path / "fig.png"
    result = show(runs, samples[1].id, out, task=task)
    assert result.path == out
    assert result.panels[1:] == ["weak labels (2)", "base+greedy", "LoRA+greedy", "A3TUNE+greedy"]
    assert _png_size(out)[0] == 5 * 300


def test_figure_reports_the_samples_attention_scores(tmp_path, task):
    from medbench.geometry import roi_in_frame

    sample = next(s for s in task.load("test") if s.roi is not None)

    def grid(value: float) -> dict:
        return {sample.id: {"attention": {"grid_size": 8, "grid": [value] * 64, "image_size": [256, 256]}}}

    flat = _make_run(tmp_path / "flat", task, "none", extra=grid(0.25))
    zero = _make_run(tmp_path / "zero", task, "lora", extra=grid(0.0))
    result = show([flat, zero], sample.id, tmp_path / "scores.png", task=task)
    with Image.open(sample.image_path) as im:
        mask = roi_in_frame(sample.roi, im.size, GEOMETRY)
    # A uniform map: min-max gives zeros (coverage, intensity 0); the raw share is the RoI's area.
    assert result.scores["base+greedy"] == {"coverage": 0.0, "intensity": 0.0, "roi_mass": mask.sum() / mask.size,
                                            "roi_lift": 1.0, "attention_peak": 1.0}
    assert result.scores["LoRA+greedy"] == {"coverage": 0.0, "intensity": 0.0}  # a zero map has no share


def test_weak_labels_file_in_run_dir_and_bad_layout_skipped(tmp_path, task):
    sample_id = task.load("test")[0].id
    good = _make_run(tmp_path / "a", task, "a3tune")
    (good / "weak_labels").mkdir()
    np.save(good / "weak_labels" / f"{sample_id}.npy", np.eye(8))
    assert show([good], sample_id, tmp_path / "a.png", task=task).panels[1] == "weak labels (1)"
    bad = _make_run(tmp_path / "b", task, "a3tune", extra={sample_id: {"weak_labels": [[1, 2, 3]]}})
    assert len(show([bad], sample_id, tmp_path / "b.png", task=task).panels) == 2


def test_weak_label_layouts():
    assert weak_label_segments(np.ones(64), 8, (128, 128)).shape == (1, 128, 128)
    assert weak_label_segments(np.ones((3, 8, 8)), 8, (128, 128)).shape == (3, 128, 128)
    assert weak_label_segments(np.ones((128, 128)), 8, (128, 128)).shape == (1, 128, 128)
    assert weak_label_segments(np.ones((0, 64)), 8, (128, 128)).shape == (0, 128, 128)
    assert weak_label_segments(np.ones((5, 7)), 8, (128, 128)) is None


def test_unknown_sample_and_missing_attention(tmp_path, task):
    run = _make_run(tmp_path / "runs", task, "none")
    with pytest.raises(ShowError, match="unknown sample id"):
        show([run], "test-99999-q0", task=task)
    blind = _make_run(tmp_path / "blind", task, "lora", attention=False)
    with pytest.raises(ShowError, match="no attention map"):
        show([blind], task.load("test")[0].id, task=task)


def test_cli(tmp_path, task, monkeypatch, capsys):
    import medbench.show as show_module
    from medbench.cli import main

    monkeypatch.setattr(show_module, "show", lambda *a, **k: show(*a, task=task, **k))
    run = _make_run(tmp_path / "runs", task, "none")
    out = tmp_path / "cli.png"
    assert main(["show", str(run), "--sample", task.load("test")[0].id, "--output", str(out)]) == 0
    assert _png_size(out)[0] == 600
    assert main(["show", str(run), "--sample", "nope"]) == 2
    assert "unknown sample id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    assert "examples:" in capsys.readouterr().out
