"""The phantom benchmark: determinism, counts, RoIs, balance, reports and cache integrity."""

from __future__ import annotations

import collections
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbench.hashing import sha256_file
from medbench.tasks import phantom
from medbench.tasks.phantom import REPORT_PROMPTS, PhantomReport, PhantomVQA
from medbench.tasks.phantom.common import stream_rng
from medbench.tasks.phantom.draw import MODALITIES, SIZE
from medbench.tasks.phantom.v3 import render
from medbench.tasks.phantom.v3.anatomy import generate_image, sample_findings
from medbench.tasks.phantom.v3.text import NAMES, make_questions
from medbench.types import AnswerType

TINY = {"pretrain": 2, "train": 3, "test": 12}
VOCAB = {
    "ct", "mri", "x-ray", "axial", "coronal", "yes", "no", "cyst", "tumor", "nodule", "opacity",
    "effusion", "liver", "spleen", "left kidney", "right kidney", "left", "right", "upper", "lower",
    "frontal", "occipital", "parietal", "temporal", "small", "large", "bright", "dark", "1", "2",
}  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def test_split(cache: Path) -> tuple[PhantomVQA, list]:
    task = PhantomVQA(n_images=TINY)
    return task, task.load("test")


def _manifest(task: PhantomVQA, split: str) -> Path:
    return task.root / split / "manifest.json"


def test_task_attributes() -> None:
    for cls, kind, protocol in ((PhantomVQA, "vqa", "llava_med"), (PhantomReport, "report", "coco")):
        assert cls.kind == kind and cls.metric_protocol == protocol
        assert cls.embedded and cls.version == phantom.GENERATOR_VERSION
        assert cls.splits == ("pretrain", "train", "val", "test")
        assert cls(version="2").splits == ("pretrain", "train", "test")
        assert (cls.eval_split, cls.train_split) == ("test", "train")
    assert (PhantomVQA.name, PhantomReport.name) == ("phantom-vqa", "phantom-report")


def test_counts_ids_and_fields(cache: Path) -> None:
    vqa, report = PhantomVQA(n_images=TINY), PhantomReport(n_images=TINY)
    for split, n in TINY.items():
        samples = vqa.load(split)
        assert n <= len(samples) <= n * phantom.QUESTIONS_PER_IMAGE
        ids = [s.id for s in samples]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(s.split == split and s.id.startswith(f"{split}-") for s in samples)
        reports = report.load(split)
        assert len(reports) == n and len({s.meta["image_id"] for s in reports}) == n
    samples = vqa.load("test")
    assert samples[0].id == "test-00000-q0"
    assert {s.answer_type for s in samples} == {AnswerType.OPEN, AnswerType.CLOSED}
    assert {s.meta["modality"] for s in samples} == set(MODALITIES)
    for s in samples:
        assert s.answer in VOCAB and s.answer == s.answer.lower() and s.question.endswith("?")
        assert {"modality", "content_type", "image_id", "plane", "region"} <= set(s.meta)


def test_images_and_rois(test_split: tuple[PhantomVQA, list]) -> None:
    _, samples = test_split
    for s in samples:
        with Image.open(s.image_path) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        assert s.roi is not None
        mask = s.roi.to_mask(SIZE, SIZE)
        assert mask.shape == (SIZE, SIZE) and mask.any()
        assert 0 < s.meta["roi_fraction"] < 0.5


def test_rois_depend_on_the_question(test_split: tuple[PhantomVQA, list]) -> None:
    _, samples = test_split
    by_image = collections.defaultdict(list)
    for s in samples:
        by_image[s.meta["image_id"]].append(s)
    compared = 0
    for group in by_image.values():
        for a in group:
            for b in group:
                if a.roi.label < b.roi.label:
                    assert (a.roi.to_mask(SIZE, SIZE) != b.roi.to_mask(SIZE, SIZE)).any()
                    compared += 1
    assert compared > 0
    ph = generate_image("ct", np.random.default_rng(3))
    organs = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "body", "kidney_left_footprint"]
    for i, a in enumerate(organs):
        for b in organs[i + 1 :]:
            assert (ph.masks[a] != ph.masks[b]).any()


def test_generation_is_deterministic() -> None:
    for modality in MODALITIES:
        a = generate_image(modality, np.random.default_rng(7), np.random.default_rng(8))
        b = generate_image(modality, np.random.default_rng(7), np.random.default_rng(8))
        c = generate_image(modality, np.random.default_rng(9), np.random.default_rng(8))
        assert np.array_equal(a.image, b.image) and a.findings == b.findings
        assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
        assert not np.array_equal(a.image, c.image)


def test_two_builds_are_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = []
    for name in ("a", "b"):
        monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / name))
        task = PhantomVQA(n_images={"train": 4})
        task.load("train")
        roots.append(task.root / "train")
    first, second = (r / "manifest.json" for r in roots)
    assert first.read_bytes() == second.read_bytes()
    for rel in json.loads(first.read_text())["files"]:
        assert (roots[0] / rel).read_bytes() == (roots[1] / rel).read_bytes()


def test_sizes_and_seed_change_the_cache(cache: Path) -> None:
    a = PhantomVQA(n_images={"test": 3})
    assert a.root == PhantomVQA(n_images={"test": 3}).root
    assert a.root != PhantomVQA(n_images={"test": 4}).root
    assert a.root != PhantomVQA(n_images={"test": 3}, seed=1).root
    assert a.root.name.startswith(f"v{phantom.GENERATOR_VERSION}-")
    assert a.root.parent == cache / "phantom"


@pytest.mark.parametrize("damage", ["flip_png", "truncate_png", "truncate_manifest", "edit_manifest"])
def test_damaged_cache_is_rebuilt(cache: Path, damage: str) -> None:
    task = PhantomVQA(n_images={"test": 3})
    before = task.load("test")
    manifest = _manifest(task, "test")
    original = manifest.read_bytes()
    image = Path(before[0].image_path)
    image_bytes = image.read_bytes()
    if damage == "flip_png":
        data = bytearray(image_bytes)
        data[len(data) // 2] ^= 0xFF
        image.write_bytes(bytes(data))
    elif damage == "truncate_png":
        image.write_bytes(image_bytes[: len(image_bytes) // 2])
    elif damage == "truncate_manifest":
        manifest.write_bytes(original[: len(original) // 2])
    else:
        data = json.loads(original)
        data["vqa"][0]["answer"] = "tampered"
        manifest.write_text(json.dumps(data))
    after = PhantomVQA(n_images={"test": 3}).load("test")
    assert after == before
    assert manifest.read_bytes() == original and image.read_bytes() == image_bytes


def test_size_only_verification_still_catches_truncation(cache: Path) -> None:
    task = PhantomVQA(n_images={"test": 3}, verify="size")
    samples = task.load("test")
    mask = Path(samples[0].roi.mask_path)
    good = mask.read_bytes()
    mask.write_bytes(good[:-5])
    task.load("test")
    assert mask.read_bytes() == good


def test_concurrent_builders_agree(cache: Path) -> None:
    results: list = []
    errors: list = []

    def build() -> None:
        try:
            results.append(PhantomVQA(n_images={"pretrain": 3}).load("pretrain"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    task = PhantomVQA(n_images={"pretrain": 3})
    files = json.loads(_manifest(task, "pretrain").read_text())["files"]
    assert all(sha256_file(task.root / "pretrain" / rel) == info["sha256"] for rel, info in files.items())
    assert not [p for p in (task.root).iterdir() if p.name.startswith(".")]


def _questions(n: int) -> list[tuple[object, str, object]]:
    """(findings, type, QA) of ``n`` images, question logic only (no drawing)."""
    out = []
    for i in range(n):
        f = sample_findings(MODALITIES[i % 3], stream_rng("3", 0, "balance", i, "image"))
        out.extend((f, qtype, qa) for qtype, qa in make_questions(f, stream_rng("3", 0, "balance", i, "text")))
    return out


def _template(question: str) -> str:
    for name in sorted(NAMES.values(), key=len, reverse=True):
        question = question.replace(name, "<where>")
    for value in ("bright", "dark", "small", "large"):
        question = question.replace(f" {value}?", " <value>?")
    return question


def test_answers_are_balanced() -> None:
    """Closed yes rates within 40-60 % per template and per (type, modality); sides, sizes and
    intensities near 50/50; image-level questions rare."""
    questions = _questions(3000)
    per_key: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    answer_types: collections.Counter = collections.Counter()
    for f, qtype, qa in questions:
        answer_types[qa.answer_type] += 1
        per_key[("type", qtype)][qa.answer] += 1
        if qa.answer_type == AnswerType.CLOSED:
            per_key[("template", _template(qa.question))][qa.answer] += 1
            per_key[("modality", qtype, f.modality)][qa.answer] += 1
    assert 0.35 < answer_types[AnswerType.OPEN] / sum(answer_types.values()) < 0.65
    checked = 0
    for key, counts in per_key.items():
        n = sum(counts.values())
        if {"yes", "no"} & set(counts) and n >= 150:
            assert 0.40 <= counts["yes"] / n <= 0.60, (key, counts)
            checked += 1
    assert checked >= 15
    for pair in (("left", "right"), ("small", "large"), ("bright", "dark")):
        n = sum(c[pair[0]] + c[pair[1]] for c in per_key.values() if c)
        share = sum(c[pair[0]] for c in per_key.values()) / n
        assert 0.40 <= share <= 0.60, (pair, share)
    image_level = sum(1 for _, qtype, _ in questions if qtype in ("modality_open", "plane_open"))
    assert image_level / len(questions) < 0.05


def test_abnormal_images_carry_distractors_that_differ() -> None:
    """Half of abnormal images have a second lesion slot; two lesions differ in kind, size, intensity."""
    findings = [sample_findings(MODALITIES[i % 3], stream_rng("3", 0, "d", i, "image")) for i in range(2000)]
    abnormal = [f for f in findings if f.abnormal]
    assert 0.75 <= len(abnormal) / len(findings) <= 0.85
    two = [f for f in abnormal if len(f.lesions) == 2]
    assert 0.4 <= len(two) / len(abnormal) <= 0.6
    for f in two:
        a, b = f.lesions
        assert a.slot != b.slot and a.kind != b.kind
        for attr in ("size", "intensity"):
            if getattr(a, attr) is not None and getattr(b, attr) is not None:
                assert getattr(a, attr) != getattr(b, attr)


def test_the_answer_lives_in_the_roi() -> None:
    """Slot questions point at the named slot; lesion-attribute questions at the named lesion and
    never at the other (distractor) lesion; the lesion drawn is inside its slot."""
    seen: collections.Counter = collections.Counter()
    for i in range(90):
        r = render(0, "roi-check", i, 3)
        f = r.findings
        for les in f["lesions"]:
            drawn = r.masks[f"lesions_{les['slot']}"]
            assert drawn.any() and (drawn & r.masks[les["slot"]]).sum() >= 0.6 * drawn.sum()
        for qtype, qa in r.questions:
            roi = r.masks[qa.roi]
            assert roi.any()
            if qtype == "abnormal_closed":
                named = any(les["slot"] == qa.roi for les in f["lesions"])
                negative = "look normal" in qa.question or "free of lesions" in qa.question
                assert qa.roi in NAMES and (qa.answer == "yes") == (named != negative)
                assert bool((r.masks["lesions"] & roi).any()) == named
                seen[qtype] += 1
            if qa.roi.startswith("lesion_roi_"):
                slot = qa.roi[len("lesion_roi_"):]
                assert (r.masks[f"lesions_{slot}"] & ~roi).sum() == 0
                for les in f["lesions"]:
                    if les["slot"] != slot:
                        assert not (r.masks[f"lesions_{les['slot']}"] & roi).any()
                seen["attribute"] += 1
    assert seen["abnormal_closed"] > 10 and seen["attribute"] > 5


def test_val_split_has_its_own_images(cache: Path) -> None:
    """v3's ``val`` (for choosing hyperparameters) shares no image with train or test; v2 has none."""
    task = PhantomVQA(n_images={"train": 6, "val": 6, "test": 6, "pretrain": 1})
    assert phantom.DEFAULT_IMAGES["3"]["val"] == 150
    pixels = {}
    for split in ("train", "val", "test"):
        manifest = json.loads(_manifest(task, split).read_text()) if task.load(split) else None
        pixels[split] = {e["pixels_sha256"] for e in manifest["images"]}
        assert len(pixels[split]) == 6
    assert not pixels["val"] & (pixels["train"] | pixels["test"])
    val = task.load("val")
    assert val and all(s.split == "val" and s.id.startswith("val-") for s in val)
    with pytest.raises(ValueError, match="has splits"):
        PhantomVQA(version="2").load("val")
    with pytest.raises(ValueError, match="expected positive counts"):
        PhantomVQA(version="2", n_images={"val": 3})


def test_version_2_stays_loadable_and_frozen(cache: Path) -> None:
    """v2 (for old result files) keeps its own cache directory and its exact pixels and questions."""
    v2 = PhantomVQA(version="2", n_images={"test": 2})
    v3 = PhantomVQA(n_images={"test": 2})
    assert v2.root.name.startswith("v2-") and v3.root.name.startswith("v3-") and v2.root != v3.root
    samples = v2.load("test")
    assert (samples[0].question, samples[0].answer) == ("What is the size of the aorta?", "enlarged")
    manifest = json.loads(_manifest(v2, "test").read_text())
    assert manifest["images"][0]["pixels_sha256"] == (
        "2a394ede814eca04e270e37eadf26802a38c592e8446aa68b6d2add20e205002")
    assert manifest["config"]["generator_version"] == "2"
    with pytest.raises(ValueError, match="version"):
        PhantomVQA(version="9")


def test_a_v2_cache_is_never_read_as_v3(cache: Path) -> None:
    """A v2 split planted where v3's would be fails verification and is rebuilt as v3."""
    v2 = PhantomVQA(version="2", n_images={"test": 2})
    v2.load("test")
    v3 = PhantomVQA(n_images={"test": 2})
    v3.root.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(v2.root / "test", v3.root / "test")
    samples = v3.load("test")
    assert json.loads(_manifest(v3, "test").read_text())["config"]["generator_version"] == "3"
    assert {s.answer for s in samples} <= VOCAB


def test_reports_are_varied(cache: Path) -> None:
    reports = PhantomReport(n_images={"test": 24}).load("test")
    assert len(reports) == 24
    assert all(r.answer_type == AnswerType.REPORT and r.question in REPORT_PROMPTS for r in reports)
    assert all(r.answer and r.answer.endswith(".") and r.roi.to_mask(SIZE, SIZE).any() for r in reports)
    assert len({r.answer for r in reports}) == len(reports)
    sentences = {s.strip() for r in reports for s in r.answer.split(". ")}
    assert len(sentences) > 40
    assert len({r.question for r in reports}) > 1


def test_bad_arguments(cache: Path) -> None:
    with pytest.raises(ValueError):
        PhantomVQA(n_images={"validation": 3})
    with pytest.raises(ValueError):
        PhantomVQA(n_images={"test": 0})
    with pytest.raises(ValueError):
        PhantomVQA(n_images={"test": 2}).load("validation")


def test_rois_are_visible_on_the_token_grid(cache: Path) -> None:
    """Every RoI keeps at least one cell of tiny-med-llava's 8×8 grid under the default rule (the
    issue's gate: ≥ 95 %); the plain area50 rule would lose many lesion RoIs."""
    from medbench.datacheck import roi_visibility
    from medbench.geometry import crop_geometry

    samples = PhantomVQA(n_images={"train": 30, "test": 30}).load("test")
    share = roi_visibility(samples, crop_geometry(128, 8))
    assert share["n_roi"] == len(samples) and share["grid_size"] == 8
    assert share["visible"]["area50_max"] >= 0.95
    assert share["visible"]["area50"] < 0.9
