"""The attention grid's orientation on its way from a predictions row to Coverage/Intensity.

A predictions row stores the G×G grid row-major (row = image y, column = image x), as the engine
builds it from the image tokens' raster order. Scoring must rebuild it the same way before it
meets the RoI mask: a transposed grid scores a top-right RoI with the bottom-left attention.
The expected values are worked out by hand below.
"""

from __future__ import annotations

import pytest

from medbench.geometry import crop_geometry
from medbench.scoring import score_vqa
from medbench.types import AnswerType, RoI, Sample

# 4×4 source image, model frame 4×4 (shortest edge 4, no crop), 2×2 token grid.
GEOMETRY = crop_geometry(4, 2)


def sample(sample_id: str, box: tuple[float, float, float, float]) -> Sample:
    return Sample(id=sample_id, image_path="", question="where is the lesion?", answer="yes",
                  answer_type=AnswerType.CLOSED, split="test", roi=RoI(boxes=(box,)))


def prediction(sample_id: str, grid_row_major: list[float]) -> dict:
    return {"id": sample_id, "prediction": "yes", "answer": "yes", "answer_type": "closed",
            "attention": {"grid_size": 2, "grid": grid_row_major, "image_size": [4, 4]}}


def scores(samples: list[Sample], rows: list[dict]) -> dict:
    metrics, _, per_sample, counts = score_vqa(rows, {s.id: s for s in samples}, GEOMETRY, seed=0)
    assert counts["with_attention"] == len(rows)
    return per_sample


# Hand computation. The grid [[0, 1], [0, 0]] (top-right cell hot) is already min-max scaled.
# Bilinear 2 → 4 with align_corners=False samples source coordinates (d + 0.5)/2 − 0.5, clamped:
# 0, 0.25, 0.75, 1 (the last clamps at the edge), so the weight of source row 0 on output rows
# 0..3 is w0 = (1, 0.75, 0.25, 0) and of row 1 is w1 = (0, 0.25, 0.75, 1); columns alike.
# The upsampled map is M[y, x] = w0[y] · w1[x]:
#     y=0: 0, 0.25,   0.75,   1
#     y=1: 0, 0.1875, 0.5625, 0.75
#     y=2: 0, 0.0625, 0.1875, 0.25
#     y=3: 0, 0,      0,      0
# Top-right RoI (x 2..3, y 0..1): 0.75 + 1 + 0.5625 + 0.75 = 3.0625 over 4 pixels, all ≥ 0.15.
# Bottom-left RoI (x 0..1, y 2..3): 0 + 0.0625 + 0 + 0 = 0.0625 over 4 pixels, none ≥ 0.15.
TOP_RIGHT_HOT = [0.0, 1.0, 0.0, 0.0]
TOP_RIGHT = (2.0, 0.0, 4.0, 2.0)  # (x0, y0, x1, y1), upper bounds exclusive
BOTTOM_LEFT = (0.0, 2.0, 2.0, 4.0)


def test_top_right_attention_covers_a_top_right_roi():
    per_sample = scores([sample("tr", TOP_RIGHT), sample("bl", BOTTOM_LEFT)],
                        [prediction("tr", TOP_RIGHT_HOT), prediction("bl", TOP_RIGHT_HOT)])
    assert per_sample["coverage"] == {"tr": 1.0, "bl": 0.0}
    assert per_sample["intensity"]["tr"] == pytest.approx(3.0625 / 4)
    assert per_sample["intensity"]["bl"] == pytest.approx(0.0625 / 4)


def test_a_non_symmetric_grid_with_three_levels():
    # grid [[0.2, 1.0], [0.6, 0.2]] → min-max [[0, 1], [0.5, 0]]; on the 4×4 frame
    # M[y, x] = w1[x]·w0[y] + 0.5·w0[x]·w1[y]. Top-right RoI: y 0 → 0.75, 1; y 1 →
    # 0.5625 + 0.5·0.25·0.25 = 0.59375, 0.75 + 0 = 0.75. Sum 3.09375, all ≥ 0.15.
    # Bottom-left RoI: y 2 → x 0: 0.5·0.75 = 0.375, x 1: 0.0625 + 0.5·0.75·0.75 = 0.34375;
    # y 3 → x 0: 0.5, x 1: 0.375. Sum 1.59375, all ≥ 0.15.
    # Top-left RoI (x 0..1, y 0..1): y 0 → 0, 0.25; y 1 → 0.5·0.25 = 0.125, 0.1875 + 0.5·0.75·0.25
    # = 0.28125. Sum 0.65625; 0.25 and 0.28125 are ≥ 0.15 → coverage 2/4.
    grid = [0.2, 1.0, 0.6, 0.2]
    top_left = (0.0, 0.0, 2.0, 2.0)
    per_sample = scores([sample("tr", TOP_RIGHT), sample("bl", BOTTOM_LEFT), sample("tl", top_left)],
                        [prediction("tr", grid), prediction("bl", grid), prediction("tl", grid)])
    assert per_sample["intensity"]["tr"] == pytest.approx(3.09375 / 4)
    assert per_sample["intensity"]["bl"] == pytest.approx(1.59375 / 4)
    assert per_sample["intensity"]["tl"] == pytest.approx(0.65625 / 4)
    assert per_sample["coverage"] == {"tr": 1.0, "bl": 1.0, "tl": 0.5}
