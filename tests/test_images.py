"""16-bit and float images reach the model as 8-bit images rescaled by their own range.

Every file here is a real image written by Pillow: 16-bit PNG (``I;16``), big-endian 16-bit TIFF
(``I;16B``), 32-bit integer TIFF (``I``) and 32-bit float TIFF (``F``), the formats X-rays come in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_datasets import write_cares_iuxray
from PIL import Image

from medbench.cli import main

H, W = 48, 64
#: A 12-bit X-ray-like ramp: 1000 … 4071 over the image.
RAMP = (1000 + np.arange(H * W).reshape(H, W)).astype(np.uint16)


def ramp_8bit(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.rint((values.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def write_i16_png(path: Path, values: np.ndarray = RAMP) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    return path


def write_i16b_tiff(path: Path) -> Path:
    Image.frombytes("I;16B", (W, H), RAMP.astype(">u2").tobytes()).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16B"
    return path


def write_i32_tiff(path: Path) -> Path:
    Image.fromarray(RAMP.astype(np.int32) - 3000).save(path)
    with Image.open(path) as im:
        assert im.mode == "I"
    return path


def write_float_tiff(path: Path, values: np.ndarray | None = None) -> Path:
    values = np.linspace(0.0, 1.0, H * W, dtype=np.float32).reshape(H, W) if values is None else values
    Image.fromarray(values.astype(np.float32), mode="F").save(path)
    with Image.open(path) as im:
        assert im.mode == "F"
    return path


WRITERS = {"i16-png": (write_i16_png, "x.png"), "i16b-tiff": (write_i16b_tiff, "x.tif"),
           "i32-tiff": (write_i32_tiff, "x.tif"), "float-tiff": (write_float_tiff, "x.tif")}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_high_depth_image_rescaled_by_its_own_range(tmp_path: Path, kind: str) -> None:
    writer, name = WRITERS[kind]
    from medbench.images import open_image

    path = writer(tmp_path / name)
    with Image.open(path) as im:
        stored = np.asarray(im)
    rgb = open_image(path)
    assert rgb.mode == "RGB" and rgb.size == (W, H)
    pixels = np.asarray(rgb)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], ramp_8bit(stored))
    assert pixels.min() == 0 and pixels.max() == 255
    assert (pixels == 255).mean() < 0.01 and (pixels == 0).mean() < 0.01  # neither near-white nor black


def test_grey_kept_for_grey_padding_backbones(tmp_path: Path) -> None:
    from medbench.images import open_image

    grey = open_image(write_i16_png(tmp_path / "x.png"), keep_grey=True)
    assert grey.mode == "L"
    np.testing.assert_array_equal(np.asarray(grey), ramp_8bit(RAMP))


def test_eight_bit_images_unchanged(tmp_path: Path) -> None:
    from medbench.images import open_image

    values = (np.arange(H * W).reshape(H, W) % 200 + 20).astype(np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "l.png"))[..., 0], values)
    assert open_image(tmp_path / "l.png", keep_grey=True).mode == "L"


def test_backbone_loads_high_depth_images(tmp_path: Path) -> None:
    from medbench.backbones.base import Backbone

    image = Backbone.load_image(write_i16_png(tmp_path / "x.png"))
    assert image.mode == "RGB" and 0.3 < np.asarray(image).mean() / 255 < 0.7


@pytest.mark.parametrize("bad", ["constant-i16", "constant-float", "nan-float"])
def test_unconvertible_high_depth_images_refused(tmp_path: Path, bad: str) -> None:
    from medbench.images import ImageModeError, open_image

    if bad == "constant-i16":
        path = write_i16_png(tmp_path / "x.png", np.full((H, W), 700, dtype=np.uint16))
        match = "constant"
    else:
        values = np.full((H, W), 0.5, dtype=np.float32)
        if bad == "nan-float":
            values[0, :5] = np.nan
            values[1] = 1.0
        path = write_float_tiff(tmp_path / "x.tif", values)
        match = "constant" if bad == "constant-float" else "NaN"
    with pytest.raises(ImageModeError, match=match):
        open_image(path)


def test_data_check_counts_modes_and_skips_unconvertible(tmp_path: Path, capsys) -> None:
    root = write_cares_iuxray(tmp_path / "data")
    images = root / "iu_xray" / "images"
    write_i16_png(images / "CXR1_IM-0001" / "0.png")
    write_i16_png(images / "CXR2_IM-0002" / "0.png", np.full((H, W), 4095, dtype=np.uint16))
    assert main(["data", "check", "--task", "iu-xray-vqa", "--data-root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    unconvertible = [s for s in out["skipped"] if s["reason"].startswith("image-unconvertible")]
    # CXR2's one loadable question (its other two are loader skips) is skipped for its constant image
    assert [s["id"] for s in unconvertible] == ["iuxray-cares-L00003"]
    assert "constant" in unconvertible[0]["reason"] and out["skipped_by_reason"]["image-unconvertible"] == 1
    assert out["image_modes"] == {"I;16": 1, "L": 2, "RGB": 1}  # CXR1's ramp; CXR3-5 as the fixture wrote them
    assert sum(out["splits"][split]["n"] for split in out["splits"]) == 9
    assert main(["data", "check", "--task", "iu-xray-vqa", "--data-root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "image modes:" in text and "I;16 1" in text and "own min-max range" in text
