"""Dense vision targets, the linear probe on frozen visual tokens, and the vision pretraining stage."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from killing import kill_when
from safetensors.torch import load_file

from medbench import vision_targets as vt
from medbench.backbones.base import Backbone
from medbench.pretrain_vision import step_indices
from medbench.vision_probe import ProbeConfig, fit_score, linear_probe

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- targets, by hand -------------------------------------------------------------------------
def test_lesion_cells_threshold_by_hand():
    mask = np.zeros((256, 256), dtype=bool)
    mask[0:10, 0:10] = True  # 100 px of cell (0, 0)'s 1024: 9.8 % -> not a lesion cell
    mask[0:11, 40:50] = True  # 110 px in cell (0, 1): 10.7 % -> a lesion cell
    mask[100:120, 60:68] = True  # 80 px in cell (3, 1) and 80 px in cell (3, 2) (columns 60-63 | 64-67)
    frac = vt.cell_fractions(mask, 8)
    assert frac[0, 0] == pytest.approx(100 / 1024) and frac[0, 1] == pytest.approx(110 / 1024)
    assert frac[3, 1] == pytest.approx(80 / 1024) and frac[3, 2] == pytest.approx(80 / 1024)
    cells = vt.lesion_cells(mask, 8)
    assert cells.shape == (8, 8) and cells.sum() == 1 and cells[0, 1]
    # 16x16 px cells: 100/256 in (0, 0); 88/256 in (0, 2) but 22/256 in (0, 3); 48, 48, 32, 32 /256 in (6..7, 3..4)
    assert vt.lesion_cells(mask, 16).sum() == 6 and not vt.lesion_cells(mask, 16)[0, 3]
    with pytest.raises(ValueError, match="grid"):
        vt.cell_fractions(np.zeros((256, 200), dtype=bool), 8)


def test_structures_pick_the_smallest_present_mask_and_cells_the_majority():
    body = np.zeros((64, 64), dtype=bool)
    body[4:60, 4:60] = True
    brain = np.zeros_like(body)
    brain[16:48, 16:48] = True
    eye = np.zeros_like(body)
    eye[16:24, 16:24] = True
    stem = np.zeros_like(body)
    stem[40:48, 40:48] = True
    masks = {"body": body, "brain": brain, "eye_left": eye, "brainstem": stem, "lesions": eye,
             "ventricle_left_footprint": body, "organs": brain, "findings": body}
    px = vt.structure_pixels(masks, {"brainstem": False})
    names = np.array(vt.STRUCTURES)[px]
    assert names[0, 0] == "background" and names[10, 10] == "body" and names[20, 20] == "eye_left"
    assert names[30, 30] == "brain" and names[44, 44] == "brain"  # the absent brainstem is not drawn
    cells = np.array(vt.STRUCTURES)[vt.majority_cells(px, 4)]  # 16x16 px cells
    assert cells[1, 0] == "body" and cells[0, 0] == "body"  # 192 and 144 body px of 256
    assert cells[1, 1] == "brain"  # 192 brain px, 64 eye px
    assert vt.majority_cells(np.array([[0, 1], [1, 0]]), 1)[0, 0] == 0  # a tie goes to the smaller index
    with pytest.raises(ValueError, match="no dense-target class"):
        vt.structure_pixels({"body": body, "tail": eye}, {})


def test_artefact_pixels_are_loud_pixels_outside_every_mask():
    image = np.full((32, 32, 3), 10, dtype=np.uint8)
    body = np.zeros((32, 32), dtype=bool)
    body[8:24, 8:24] = True
    image[0, 0] = (255, 255, 255)  # white text outside
    image[0, 1] = (40, 200, 200)  # cyan marker outside
    image[0, 2] = (200, 200, 200)  # bright but grey: not an artefact
    image[10, 10] = (255, 255, 255)  # inside the body: tissue, whatever its value
    art = vt.artefact_pixels(image, {"body": body})
    assert art.sum() == 2 and art[0, 0] and art[0, 1]


def test_targets_of_rendered_images_cover_every_structure():
    artefact_cells = 0
    for index in range(9):  # three of each modality
        rendered = vt.render(0, "pretrain", index)
        t = vt.cell_targets(rendered, 8)
        assert t.structure.shape == t.lesion.shape == t.artefact.shape == (8, 8)
        assert t.lesion_image == bool(rendered.masks["lesions"].any())
        assert t.lesion.any() <= t.lesion_image
        assert not t.artefact.any() or rendered.artefacts
        assert (t.structure > 1).any()
        artefact_cells += int(t.artefact.sum())
    assert artefact_cells > 0


def test_step_indices_are_fresh_or_cycle_a_pool_in_seeded_epochs():
    assert step_indices(2, 4, 0, 0) == [8, 9, 10, 11]
    epoch = [i for s in range(3) for i in step_indices(s, 4, 12, 5)]
    assert sorted(epoch) == list(range(12)) and epoch != list(range(12))
    assert step_indices(3, 4, 12, 5) != step_indices(0, 4, 12, 5)  # the next epoch has its own order
    assert step_indices(1, 4, 12, 5) == step_indices(1, 4, 12, 5)


# ---- the probe --------------------------------------------------------------------------------
def test_fit_score_is_chance_on_uninformative_features_and_high_on_informative_ones():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    noise = rng.normal(size=(400, 8))
    chance = fit_score(noise[:300], y[:300], noise[300:], y[300:])
    assert abs(chance["balanced_accuracy"] - 0.5) < 0.12
    signal = noise + y[:, None] * 2.0
    assert fit_score(signal[:300], y[:300], signal[300:], y[300:])["balanced_accuracy"] > 0.9
    with pytest.raises(ValueError, match="both classes"):
        fit_score(noise[:10], np.zeros(10, dtype=int), noise[10:20], y[10:20])


def test_probe_of_a_model_whose_tokens_carry_nothing_is_exactly_chance(random_backbone):
    model = copy.deepcopy(random_backbone.model)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.zero_()
    blind = Backbone(model, random_backbone.processor, random_backbone.template, checkpoint_id="blind")
    result = linear_probe(blind, ProbeConfig(n_train=24, n_test=12))
    assert result["image_lesion"]["balanced_accuracy"] == 0.5
    assert result["cell_lesion"]["balanced_accuracy"] == 0.5
    assert result["cell_lesion"]["n_train"] == 24 * 64 and result["cell_lesion"]["n_test"] == 12 * 64
    assert 0 < result["cell_lesion"]["test_positive_rate"] < 0.2


def test_probe_of_the_random_model_reports_both_probes(random_backbone):
    result = linear_probe(random_backbone, ProbeConfig(n_train=24, n_test=12))
    assert result["grid"] == 8 and result["cell_rule"] == "lesion pixels >= 10% of the cell"
    for key in ("image_lesion", "cell_lesion"):
        assert 0.0 <= result[key]["balanced_accuracy"] <= 1.0


def test_pretrain_cli_needs_output_unless_probing(capsys):
    from medbench.cli import build_parser, main

    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--stage", "vision"])
    assert exc.value.code == 2 and "--output is required" in capsys.readouterr().err
    args = build_parser().parse_args(["pretrain", "probe", "--model", "m", "--json"])
    assert args.func.__name__ == "probe_main" and args.model == "m" and args.json
    args = build_parser().parse_args(["pretrain", "--stage", "vision", "--output", "o"])
    assert args.func.__name__ == "main" and args.pretrain_action is None


# ---- the vision stage: trains the tower only, resumes bitwise after SIGKILL -------------------
def _cmd(start: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "medbench.cli", "-q", "pretrain", "--stage", "vision", "--init-from", str(start),
            "--output", str(out), "--steps", "4", "--batch-size", "4", "--images", "8", "--checkpoint-every", "1"]


def _saved(out: Path, step: int) -> bool:
    return (out / "state" / f"step-{step:08d}" / "meta.json").exists()


@pytest.mark.slow
def test_vision_stage_trains_the_tower_and_resumes_bitwise(random_backbone, tmp_path):
    start = tmp_path / "start"
    random_backbone.model.save_pretrained(start)
    random_backbone.processor.save_pretrained(start)
    reference = tmp_path / "reference"
    done = subprocess.run(_cmd(start, reference), capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((reference / "pretrain.json").read_text())
    assert record["stage"] == "vision" and record["config"]["steps"] == 4 and record["distinct_images"] == 8
    assert set(record["curves"]) == {"loss", "structure", "lesion", "artefact", "image"}
    assert not (reference / "state").exists()
    before, after = load_file(str(start / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("vision_tower" in k for k in changed)
    assert not any("projector" in k or "language_model" in k for k in changed)

    resumed = tmp_path / "resumed"
    assert kill_when(_cmd(start, resumed), lambda: _saved(resumed, 2), ENV)
    assert not (resumed / "pretrain.json").exists()
    done = subprocess.run(_cmd(start, resumed), capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    again = load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(after[k], again[k]) for k in after)
    record_again = json.loads((resumed / "pretrain.json").read_text())
    assert record_again["curves"] == record["curves"] and record_again["resumed_at_step"] >= 2
