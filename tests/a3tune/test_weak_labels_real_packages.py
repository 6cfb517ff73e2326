"""SAM and BiomedCLIP through the real packages (the ``weak-labels`` extra), with random weights in
the published file layouts: the loader, the mask generator, the caches, the grid projection, the
BiomedCLIP offline preparation, an A³TUNE training on them, and the bad-input messages.

Skipped when the extra is not installed (``pip install -e '.[weak-labels]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("segment_anything")
pytest.importorskip("open_clip")
pytest.importorskip("cv2")

import torch  # noqa: E402

from medbench.geometry import crop_geometry  # noqa: E402
from medbench.methods.a3tune import segmenters as seg  # noqa: E402
from medbench.methods.a3tune.scorers import BiomedClipScorer, RandomScorer, prepare_biomedclip  # noqa: E402
from medbench.methods.a3tune.weak_labels import WeakLabeler, mask_to_grid, weak_labels  # noqa: E402
from medbench.paths import cache_dir  # noqa: E402
from medbench.tasks.phantom import PhantomVQA  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from weak_label_fixtures import BUMPS, build_tiny_sam, write_tiny_biomedclip_download, write_tiny_sam  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weak-label-weights")
    sam = write_tiny_sam(root / "sam_tiny.pth")
    download = write_tiny_biomedclip_download(root / "BiomedCLIP-download")
    prepared = prepare_biomedclip(download, root / "biomedclip")
    return {"root": root, "sam": sam, "download": download, "biomedclip": prepared}


@pytest.fixture(scope="module")
def task():
    return PhantomVQA(n_images={"train": 6, "test": 4})


def _cached_files() -> set[Path]:
    root = cache_dir("weak_labels")
    return {p for p in root.rglob("*") if p.is_file()}


# ---- SAM loader -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h"])
def test_arch_table_matches_segment_anything_builders(arch):
    """The shapes medbench reads identify each published SAM built by the package's own registry."""
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        model = sam_model_registry[arch]()
    geometry = seg.sam_geometry(model.state_dict())
    assert seg.arch_of(geometry) == arch
    assert geometry["img_size"] == 1024 and geometry["window_size"] == 14 and geometry["prompt_dim"] == 256


def test_tiny_sam_geometry_read_from_the_file(files):
    model, arch = seg.load_sam(files["sam"])
    assert arch == "custom"  # none of the three: built from segment-anything's classes with the file's geometry
    reference = build_tiny_sam()
    assert type(model.image_encoder).__name__ == "ImageEncoderViT" and model.image_encoder.img_size == 256
    assert [b.window_size for b in model.image_encoder.blocks] == [8, 0]
    ref_state = reference.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in model.state_dict().items())


def test_sam_weak_labels_cached_and_on_the_grid(files, task):
    samples = list({s.image_path: s for s in task.load("train")}.values())[:3]  # three different images
    labeler = WeakLabeler(seg.Sam(str(files["sam"])), RandomScorer(seed=1), progress=False)
    assert labeler.segmenter.fingerprint()["arch"] == "custom"
    first = [labeler.segments(s.image_path) for s in samples]
    # the generator's masks: the three bumps of the full image and of each of the 2×2 crops
    assert all(len(found) == 5 * len(BUMPS) for found in first)
    for found in first:
        for s in found:
            assert s.mask.dtype == bool and s.mask.shape == (256, 256) and s.area == int(s.mask.sum()) > 0
            assert s.predicted_iou >= 0.5 and 0.5 <= s.stability_score <= 1.0
    seg_dir = cache_dir("weak_labels", "segments", labeler.seg_fp)
    stored = sorted(p.name for p in seg_dir.rglob("*") if p.is_file())
    assert stored == sorted(f"{labeler.image_sha(s.image_path)}.npz" for s in samples)  # no temporary leftovers
    labeler.segmenter.segment = lambda rgb: pytest.fail("SAM re-ran although its masks are cached")
    again = [labeler.segments(s.image_path) for s in samples]
    assert all(np.array_equal(a.mask, b.mask) for fa, fb in zip(first, again) for a, b in zip(fa, fb))
    geometry = crop_geometry(128, 8)
    labels = weak_labels(labeler, "phantom-vqa", "train", samples, geometry, 4, "area50")
    rows = labeler.score_samples("phantom-vqa", "train", samples)
    for s in samples:
        grids = labels.grids[s.id]
        assert grids.shape[1] == 64 and 1 <= len(grids) <= 4
        chosen = sorted(rows[s.id]["candidates"], key=lambda c: (-c[1], c[0]))[:4]
        expected = [mask_to_grid(first[samples.index(s)][int(i)].mask, geometry, "area50") for i, _ in chosen]
        assert np.array_equal(grids, np.stack([g for g in expected if g.any()]))


def test_sam_without_any_mask_returns_none(files):
    """segment-anything 1.0 raises IndexError when no crop yields a mask; medbench returns no segments."""
    sam = seg.Sam(str(files["sam"]))
    with torch.no_grad():
        sam._model.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(-5.0)  # every mask under 0.5
    assert sam.segment(np.full((64, 64, 3), 90, dtype=np.uint8)) == []


def test_bad_sam_checkpoints_name_the_file_and_cache_nothing(files, tmp_path, capsys):
    from medbench.cli import main

    before = _cached_files()
    truncated = tmp_path / "sam_vit_h_4b8939.pth"
    truncated.write_bytes(files["sam"].read_bytes()[: files["sam"].stat().st_size // 2])
    not_sam = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, not_sam)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": argparse.Namespace(a=1)}, pickled)  # needs full unpickling
    cases = [
        (files["sam"], "vit_b", [str(files["sam"]), "sam_arch=vit_b expects image encoder width 768, 12 blocks",
                                 "width 64, 2 blocks"]),
        (truncated, "auto", [str(truncated), "not readable", "truncated"]),
        (not_sam, "auto", [str(not_sam), "not a segment-anything SAM state dict"]),
        (pickled, "auto", [str(pickled), "weights_only=True"]),
    ]
    for path, arch, needles in cases:
        with pytest.raises(seg.WeightFileError) as err:
            seg.Sam(str(path), arch=arch)
        assert all(n in str(err.value) for n in needles), str(err.value)
        assert main(["-q", "weak-labels", "check", "--sam", str(path), "--sam-arch", arch]) == 1
        stderr = capsys.readouterr().err
        assert str(path) in stderr and "Traceback" not in stderr
    args = ["-q", "weak-labels", "build", "--task", "phantom-vqa", "--limit", "2", "--method-args", "segmenter=sam",
            f"sam_checkpoint={truncated}", "scorer=random"]
    assert main(args) == 1
    assert str(truncated) in capsys.readouterr().err
    assert _cached_files() == before


# ---- BiomedCLIP -----------------------------------------------------------------------------
def test_biomedclip_download_needs_preparing_then_loads_offline(files):
    with pytest.raises(seg.WeightFileError, match="prepare-biomedclip"):
        BiomedClipScorer(str(files["download"]))
    config = json.loads((files["biomedclip"] / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == str(files["biomedclip"] / "text")
    scorer = BiomedClipScorer(str(files["biomedclip"]))
    from PIL import Image

    crops = [Image.new("RGB", (30, 20), (200, 10, 10)), Image.new("RGB", (40, 40), (10, 10, 200))]
    a = scorer.score(crops, "Is there a lesion in the liver?")
    b = scorer.score(crops, "What modality is this?")
    assert a.shape == (2,) and np.all(np.abs(a) <= 100 + 1e-3) and not np.allclose(a, b)
    assert np.array_equal(a, BiomedClipScorer(str(files["biomedclip"])).score(crops, "Is there a lesion in the liver?"))
    # the scores are open_clip's own 100·cos of the two normalised embeddings
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{files['biomedclip']}")
    tok = open_clip.get_tokenizer(f"local-dir:{files['biomedclip']}")
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.eval().encode_image(torch.stack([preprocess(c) for c in crops])), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok(["Is there a lesion in the liver?"])), dim=-1)
    assert np.allclose(a, 100 * (img @ txt.T)[:, 0].numpy(), atol=1e-4)


def test_prepare_biomedclip_bad_inputs(files, tmp_path, capsys):
    import shutil

    from medbench.cli import main

    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(files["download"], no_tok)
    (no_tok / "vocab.txt").unlink()
    with pytest.raises(seg.WeightFileError, match="missing its tokenizer"):
        prepare_biomedclip(no_tok, tmp_path / "out")
    assert main(["-q", "weak-labels", "prepare-biomedclip", str(no_tok), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(no_tok) in err and "vocab.txt" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    no_text = tmp_path / "no-text-config"
    shutil.copytree(files["download"], no_text)
    (no_text / "config.json").unlink()
    with pytest.raises(seg.WeightFileError, match="BiomedBERT"):
        prepare_biomedclip(no_text, tmp_path / "out2")
    assert prepare_biomedclip(no_text, tmp_path / "out2", text_config=files["download"]).is_dir()
    wrong = tmp_path / "wrong-weights"
    shutil.copytree(files["download"], wrong)
    torch.save({"visual.proj": torch.zeros(2)}, wrong / "open_clip_pytorch_model.bin")
    with pytest.raises(seg.WeightFileError, match="does not load with open_clip"):
        prepare_biomedclip(wrong, tmp_path / "out3")
    assert not (tmp_path / "out3").exists() and not list(tmp_path.glob(".out3.*"))
    assert main(["-q", "weak-labels", "check", "--biomedclip", str(files["biomedclip"])]) == 0
    assert "BiomedCLIP ok" in capsys.readouterr().out


# ---- A³TUNE end to end ----------------------------------------------------------------------
def test_a3tune_trains_on_sam_and_biomedclip_labels(files, task, random_backbone, tmp_path):
    from medbench.methods.a3tune import A3Tune

    method = A3Tune(segmenter="sam", scorer="biomedclip", sam_checkpoint=str(files["sam"]),
                    biomedclip_dir=str(files["biomedclip"]), train_limit=4, epochs=1, batch_size=2, lam=0.5)
    out = method.train(random_backbone, task, tmp_path / "ckpt", 0, "cpu")
    record = json.loads((out / "training.json").read_text())
    assert len(record["losses"]) == 2 and all(np.isfinite(record["losses"]))
    assert record["alignment"]["align_mean"] is not None and record["alignment"]["align_mean"] > 0
    labels = record["labels"]
    assert labels["source"] == "weak" and labels["n"] == 4 and labels["unlabelled"] == 0
    assert labels["label_fp"] and 0 <= record["weak_label_quality"]["iou"] <= 1
    spec = method.label_spec(task, method.resolved(random_backbone, task))
    assert spec["segmenter"] == "sam" and spec["scorer"] == "biomedclip" and spec["sam_arch"] == "auto"
    scores = list(cache_dir("weak_labels", "phantom-vqa", task.train_split).glob("*.jsonl"))
    assert scores and all(json.loads(line)["candidates"] for p in scores for line in p.read_text().splitlines())
