"""``medbench sweep`` output: the CSV round trip and the PNG plots (bars for ablations, lines for sweeps)."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from medbench.cli_commands.sweep_cmd import FIGURES, plot_csv, read_csv, write_csv

ROWS = [{"x": "LoRA", "method_args": "qmoe=off kmoe=off lam=0", "closed_accuracy": 0.5, "open_recall": 0.25},
        {"x": "weak", "method_args": "labels=weak", "closed_accuracy": 0.625, "open_recall": 0.3},
        {"x": "GT", "method_args": "labels=gt", "closed_accuracy": 0.75}]


def _pixels(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size, set(im.convert("RGB").getdata())


def test_csv_round_trip(tmp_path):
    path = write_csv(ROWS, tmp_path / "a" / "sweep.csv")
    assert path.read_text().splitlines()[0] == "x,method_args,closed_accuracy,open_recall"
    back = read_csv(path)
    assert [r["x"] for r in back] == ["LoRA", "weak", "GT"]
    assert back[1]["closed_accuracy"] == 0.625 and back[2]["open_recall"] is None


@pytest.mark.parametrize("bars", [True, False])
def test_png_written_from_csv(tmp_path, bars):
    csv_path = write_csv(ROWS, tmp_path / "sweep.csv")
    png = plot_csv(csv_path, ("closed_accuracy", "open_recall", "not_a_column"), xlabel="labels", bars=bars,
                   title="phantom-vqa: fig4")
    assert png == tmp_path / "sweep.png" and png.stat().st_size > 1000
    size, colours = _pixels(png)
    assert size[0] > 300 and size[1] > 200
    assert len(colours) > 10  # axes, text and two coloured series, not a blank canvas


def test_default_metrics_and_missing_matplotlib(tmp_path, monkeypatch, capsys):
    csv_path = write_csv(ROWS[:2], tmp_path / "sweep.csv")
    out = plot_csv(csv_path, out=tmp_path / "other.png")  # no metrics given: every metric column
    assert out.exists() and out.stat().st_size > 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert plot_csv(csv_path, out=tmp_path / "none.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "none.png").exists()


def test_figure_grids_match_the_paper():
    assert [x for x, _ in FIGURES["fig5a"][1]] == ["1", "2", "3", "4", "6", "8"]
    assert [x for x, _ in FIGURES["fig8"][1]][-1] == "0.2"
    assert FIGURES["fig4"][1][0][1] == {"qmoe": "off", "kmoe": "off", "lam": "0"}
