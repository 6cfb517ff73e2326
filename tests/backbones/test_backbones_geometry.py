"""RoI → token-grid geometry for each preprocessing mode (spec section 5 golden cases) and the
agreement of mask geometry with the CLIP processor on non-square images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medbench import geometry as geo
from medbench.types import RoI

BOX = (100, 50, 200, 100)
CROP224 = geo.crop_geometry(224, 16)
PAD336 = geo.pad_geometry(336, 24)


@pytest.mark.parametrize("size, record, box, rows, cols", [
    ((640, 480), CROP224, (9.5625, 23.3333, 102.6875, 70.0), (1, 4), (0, 7)),
    ((480, 640), CROP224, (46.6667, 0.0, 140.0, 32.8438), (0, 2), (3, 9)),
    ((640, 480), PAD336, (52.5, 68.25, 157.5, 120.75), (4, 8), (3, 11)),
    ((480, 640), PAD336, (94.5, 26.25, 199.5, 78.75), (1, 5), (6, 14)),
])
def test_golden_boxes(size, record, box, rows, cols) -> None:
    mapped, visible = geo.map_box(BOX, size, record)
    assert mapped == pytest.approx(box, abs=1e-4)
    r, c = geo.box_cells(mapped, record)
    assert (r[0], r[-1]) == rows and (c[0], c[-1]) == cols
    assert 0 < visible <= 1


def test_crop_visible_fraction_and_pad_rows() -> None:
    _, visible = geo.map_box(BOX, (480, 640), CROP224)
    assert visible == pytest.approx(32.84375 / 46.5625, abs=1e-4)
    pad = geo.pad_token_cells((640, 480), PAD336)
    content_rows = [r for r in range(24) if not pad[r].all()]
    assert (content_rows[0], content_rows[-1]) == (3, 20)
    assert not geo.pad_token_cells((640, 480), CROP224).any()


def test_box_coverage_threshold() -> None:
    cov = geo.box_coverage((0.0, 0.0, 21.0, 14.0), PAD336)
    assert cov[0, 0] == 1.0 and cov[0, 1] == pytest.approx(0.5) and cov[1, 0] == 0.0


def _marker_image(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("size", [(641, 480), (480, 641), (97, 64), (64, 97)])
def test_mask_geometry_matches_clip_processor(size) -> None:
    from transformers import CLIPImageProcessorPil

    box = (size[0] // 5, size[1] // 4, size[0] // 2, size[1] // 2)
    image = _marker_image(size, box)
    roi = RoI(boxes=(tuple(float(v) for v in box),))
    for record, t in ((CROP224, 224), (PAD336, 336)):
        proc = CLIPImageProcessorPil(size={"shortest_edge": t}, crop_size={"height": t, "width": t},
                                     do_normalize=False, do_rescale=False)
        src = geo.pad_to_square(image, (0, 0, 0)) if record["mode"] == geo.PAD else image
        pixels = proc(src, return_tensors="np")["pixel_values"][0][0] > 127
        mask = geo.roi_in_frame(roi, size, record)
        assert mask.shape == (t, t)
        assert (pixels != mask).mean() < 0.02


def test_pad_fill_colours() -> None:
    grey = Image.new("L", (40, 20), 0)
    padded = geo.pad_image(grey, PAD336)
    assert padded.mode == "RGB" and padded.size == (40, 40) and padded.getpixel((0, 0)) == (114, 114, 114)
    assert padded.getpixel((0, 10)) == (0, 0, 0)
    rgb_record = geo.pad_geometry(336, 24, fill_l=None)
    assert geo.pad_image(grey, rgb_record).getpixel((0, 0)) == (122, 116, 104)
    assert geo.pad_image(grey.convert("RGB"), PAD336).getpixel((0, 0)) == (122, 116, 104)
    assert geo.pad_offset(40, 21) == (40, 0, 9)


def test_records_round_trip_json() -> None:
    roi = RoI(boxes=((10.0, 12.0, 30.0, 28.0),))
    for record in (CROP224, PAD336, {"mode": geo.CROP, "shortest_edge": 224, "crop": [224, 224], "grid_size": 14}):
        again = json.loads(json.dumps(record))
        assert np.array_equal(geo.roi_in_frame(roi, (64, 48), record), geo.roi_in_frame(roi, (64, 48), again))


def test_existing_crop_mode_api() -> None:
    image = Image.new("L", (64, 48), 255)
    out = geo.apply_geometry(image, {"mode": "resize_shortest+center_crop", "shortest_edge": 224,
                                     "crop": [224, 224], "grid_size": 14}, Image.NEAREST)
    assert out.size == (224, 224)
    assert geo.resize_shortest_center_crop(image, 32, (32, 32), Image.NEAREST).size == (32, 32)
    with pytest.raises(ValueError, match="unknown geometry mode"):
        geo.apply_geometry(image, {"mode": "stretch"}, Image.NEAREST)


def test_grid_rules_by_hand():
    """area50 keeps cells at least half covered; area50_max falls back to the best-covered cell(s)."""
    from medbench.geometry import frame_to_grid

    frame = np.zeros((16, 16), dtype=bool)
    frame[0, 0:3] = True  # 3 of cell 0's 16 pixels
    frame[5:6, 4:9] = True  # 4 pixels in cell 5, 1 in cell 6
    as_cells = {rule: set(np.flatnonzero(frame_to_grid(frame, 4, rule)).tolist())
                for rule in ("area50", "area50_max", "any")}
    assert as_cells == {"area50": set(), "area50_max": {5}, "any": {0, 5, 6}}
    frame[8:16, 8:16] = True  # cells 10, 11, 14, 15 fully covered: no fallback needed
    assert set(np.flatnonzero(frame_to_grid(frame, 4, "area50_max"))) == {10, 11, 14, 15}
    assert not frame_to_grid(np.zeros((16, 16), dtype=bool), 4, "area50_max").any()
    with pytest.raises(ValueError, match="grid rule"):
        frame_to_grid(frame, 4, "area25")
