"""SLAKE loader: fields, EN filter, ids, validation alias, RoI rules 1–4, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_datasets import TINY_WEIGHTS, run_tiny, slake_record, write_image, write_slake
from PIL import Image, ImageDraw

from medbench.backbones.templates import TINY
from medbench.predictions import read_rows
from medbench.task import DataRootError
from medbench.tasks._common import MalformedDataError
from medbench.tasks.slake import SLAKE, match_rois, normalise
from medbench.types import AnswerType

LABELS = ["Liver", "Left Lung", "Right Lung", "Spinal_Cord"]


def test_fields_filter_and_ids(tmp_path: Path) -> None:
    task = SLAKE(write_slake(tmp_path))
    train = task.load("train")
    assert [s.id for s in train] == ["slake-train-0", "slake-train-1", "slake-train-3", "slake-train-4"]
    assert {s.meta["lang"] for s in train} == {"en"}
    assert task.provenance["filtered"]["train"] == {"q_lang=zh": 1}
    first = train[0]
    assert first.question == "Where is the liver?" and first.answer == "Upper Left"
    assert first.answer_type is AnswerType.OPEN and train[1].answer_type is AnswerType.CLOSED
    assert first.image_path.endswith("Slake1.0/imgs/xmlab1/source.jpg") and Path(first.image_path).is_file()
    assert first.meta["source"]["qid"] == 0 and first.meta["base_type"] == "vqa"
    assert train[2].meta["base_type"] == "kg"
    test = task.load("test")
    assert [s.answer for s in test if s.id == "slake-test-12"] == ["2"]
    assert task.count_checks["test"] == {"rows": 3, "loaded": 3, "skipped": 0, "unscorable": 0, "table6": 1061,
                                         "match": False, "derived": False}  # the zh record is filtered, not a row
    assert task.skipped == []


@pytest.mark.parametrize("val_name", ["validate.json", "validation.json"])
def test_validation_alias(tmp_path: Path, val_name: str) -> None:
    task = SLAKE(write_slake(tmp_path, val_name=val_name) / "Slake1.0")
    assert [s.id for s in task.load("val")] == ["slake-val-20"]
    assert task.provenance["val_file"] == val_name


def test_roi_rules() -> None:
    assert normalise("  Spinal_Cord  X ") == "spinal cord x"
    assert match_rois("Where is the liver?", "", LABELS) == (["Liver"], "label")
    assert match_rois("Does the spinal cord look normal?", "", LABELS) == (["Spinal_Cord"], "label")
    assert match_rois("Is the lung healthy?", "", LABELS) == (["Left Lung", "Right Lung"], "head")
    assert match_rois("Which organ is abnormal?", "Left Lung", LABELS) == (["Left Lung"], "answer")
    assert match_rois("What modality is used?", "CT", LABELS) == ([], "none")
    assert match_rois("Is this the liverish part?", "", LABELS) == ([], "none")


def test_rois_from_detection(tmp_path: Path) -> None:
    task = SLAKE(write_slake(tmp_path))
    by_id = {s.id: s for s in task.load("train") + task.load("test")}
    liver = by_id["slake-train-0"].roi
    assert liver is not None and liver.boxes == ((10.0, 12.0, 30.0, 28.0),) and liver.label == "Liver"
    assert by_id["slake-train-1"].roi.boxes == ((30.0, 5.0, 40.0, 15.0),)
    assert by_id["slake-train-3"].meta["roi_match"] == "answer"
    assert by_id["slake-test-10"].meta["roi_match"] == "head"
    assert by_id["slake-train-4"].roi is None and by_id["slake-train-4"].meta["roi_match"] == "none"
    assert by_id["slake-test-12"].roi is None  # empty detection.json
    assert task.provenance["roi_rules"]["train"] == {"label": 2, "answer": 1, "none": 1}
    mask = liver.to_mask(64, 48)
    assert mask.sum() == 20 * 16


def test_roi_fallback_and_mask_mode(tmp_path: Path) -> None:
    root = write_slake(tmp_path)
    everything = {s.id: s for s in SLAKE(root, roi_fallback="all").load("train")}
    assert everything["slake-train-4"].meta["roi_match"] == "all"
    assert len(everything["slake-train-4"].roi.boxes) == 2
    masked = SLAKE(root, mask_mode="union").load("train")
    assert all(s.roi.mask_path.endswith("mask.png") for s in masked)
    with pytest.raises(ValueError):
        SLAKE(root, mask_mode="labelled")


def test_malformed_and_unsafe_records(tmp_path: Path) -> None:
    root = write_slake(tmp_path)
    base = root / "Slake1.0"
    records = json.loads((base / "test.json").read_text())
    del records[0]["question"]
    records.append(slake_record(30, 1, "Where?", "Liver", "OPEN") | {"img_name": "../../outside.jpg"})
    records.append(slake_record(31, 9, "Where?", "Liver", "OPEN"))
    records.append(slake_record(32, 1, "Where?", "", "OPEN"))
    records.append(slake_record(33, 1, "Where?", "Liver", "MAYBE"))
    write_image(tmp_path / "outside.jpg")
    (base / "test.json").write_text(json.dumps(records))
    task = SLAKE(root)
    ids = [s.id for s in task.load("test")]
    assert ids == ["slake-test-11", "slake-test-12"]
    reasons = {s.id: s.reason for s in task.skipped}
    assert "test.json record 10 field 'question': missing" in reasons["slake-test-10"]
    assert reasons["slake-test-30"].startswith("unsafe-path")
    assert reasons["slake-test-31"] == "image-missing: xmlab9/source.jpg"
    assert reasons["slake-test-32"] == "empty-answer"
    assert "field 'answer_type'" in reasons["slake-test-33"]
    with pytest.raises(MalformedDataError, match="record 10 field 'question'"):
        SLAKE(root, strict=True).load("test")
    (base / "test.json").write_text("[{")
    with pytest.raises(MalformedDataError, match="test.json: not valid JSON"):
        SLAKE(root).load("test")


def test_bad_detection_file_is_reported(tmp_path: Path) -> None:
    root = write_slake(tmp_path)
    (root / "Slake1.0" / "imgs" / "xmlab1" / "detection.json").write_text('[{"Liver": [1, 2]}]')
    task = SLAKE(root)
    assert all(s.roi is None for s in task.load("train") if "xmlab1" in s.image_path)
    assert "entry 0 field 'Liver'" in task.provenance["detection_errors"][0]
    with pytest.raises(MalformedDataError):
        SLAKE(root, strict=True).load("train")


def test_missing_layout(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text("[]")
    with pytest.raises(DataRootError, match=r"missing .*test\.json"):
        SLAKE(tmp_path).load("test")


def test_golden_prompt(tmp_path: Path) -> None:
    sample = SLAKE(write_slake(tmp_path)).load("test")[0]
    assert TINY.render(sample.question, "<image>") == "USER: <image>\nIs the lung healthy? ASSISTANT:"


@pytest.mark.skipif(not TINY_WEIGHTS.exists(), reason="the shipped tiny-med-llava checkpoint is absent")
def test_end_to_end(tmp_path: Path) -> None:
    results = run_tiny("slake", write_slake(tmp_path / "data"), tmp_path / "runs")
    assert results["task"] == "slake"
    counts = results["counts"]
    assert (counts["planned"], counts["scored"], counts["failed"]) == (3, 3, 0)
    assert (counts["open"], counts["closed"], counts["with_roi"], counts["with_attention"]) == (2, 1, 1, 1)
    run = Path(results["run_dir"])
    per_sample = json.loads((run / "per_sample.json").read_text())
    scored = ["slake-test-10", "slake-test-11", "slake-test-12"]  # the English test questions, not train's
    assert sorted(per_sample["closed_accuracy"]) == scored[:1]
    assert sorted(per_sample["open_recall"]) == scored[1:]
    geometry = json.loads((run / "run.json").read_text())["geometry"]
    assert geometry == {"mode": "resize_shortest+center_crop", "shortest_edge": 128, "crop": [128, 128],
                        "grid_size": 8}
    _, rows = read_rows(run / "predictions.jsonl")
    attention = next(r["attention"] for r in rows if r["id"] == "slake-test-10")
    assert attention["image_size"] == [48, 64]
    # "Is the lung healthy?" matches the head word "lung": the Left Lung box [30, 5, 10, 10] (x, y, w, h)
    coverage, intensity = hand_coverage_intensity(attention["grid"], (30, 5, 40, 15), (48, 64))
    assert per_sample["coverage"]["slake-test-10"] == pytest.approx(coverage, abs=1e-9)
    assert per_sample["intensity"]["slake-test-10"] == pytest.approx(intensity, abs=1e-9)
    assert results["metrics"]["coverage"] == pytest.approx(coverage, abs=1e-9)
    assert results["metrics"]["intensity"] == pytest.approx(intensity, abs=1e-9)


def hand_coverage_intensity(grid: list[float], box: tuple[int, int, int, int],
                            size: tuple[int, int]) -> tuple[float, float]:
    """Coverage/Intensity (τ = 0.15) of a row-major 8×8 grid on the tiny model's 128×128 frame, recomputed
    here: the box is drawn on the source image's mask, which goes through CLIP's shortest-edge resize
    (nearest) and centre crop; the grid is min-max scaled and upsampled with torch's bilinear
    interpolation (align_corners=False)."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    new_w, new_h = (128, int(128 * height / width)) if width <= height else (int(128 * width / height), 128)
    left, top = (new_w - 128) // 2, (new_h - 128) // 2
    mask = mask.resize((new_w, new_h), Image.NEAREST).crop((left, top, left + 128, top + 128))
    roi = torch.from_numpy(np.asarray(mask) > 127)
    assert 0 < int(roi.sum()) < 128 * 128
    g = torch.tensor(grid, dtype=torch.float64).view(8, 8)
    g = (g - g.min()) / (g.max() - g.min())
    m = torch.nn.functional.interpolate(g[None, None], size=(128, 128), mode="bilinear", align_corners=False)[0, 0]
    inside = m[roi]
    return float((inside >= 0.15).double().mean()), float(inside.mean())
