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
from medbench.tasks.phantom import REPORT_PROMPTS, PhantomReport, PhantomVQA, make_questions
from medbench.tasks.phantom_draw import MODALITIES, SIZE, generate_image, sample_findings
from medbench.types import AnswerType

TINY = {"pretrain": 2, "train": 3, "test": 12}
VOCAB = {
    "ct", "mri", "x-ray", "axial", "coronal", "yes", "no", "cyst", "tumor", "nodule", "opacity",
    "effusion", "liver", "spleen", "kidney", "left", "right", "upper", "lower", "small", "large",
    "bright", "dark", "normal", "enlarged", "1", "2", "3",
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
        assert cls.splits == ("pretrain", "train", "test")
        assert (cls.eval_split, cls.train_split) == ("test", "train")
    assert (PhantomVQA.name, PhantomReport.name) == ("phantom-vqa", "phantom-report")


def test_counts_ids_and_fields(cache: Path) -> None:
    vqa, report = PhantomVQA(n_images=TINY), PhantomReport(n_images=TINY)
    for split, n in TINY.items():
        samples = vqa.load(split)
        assert len(samples) == n * phantom.QUESTIONS_PER_IMAGE
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
    organs = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "body"]
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


def test_answers_are_balanced() -> None:
    """Question logic only (no drawing): closed yes/no and binary answers near 50/50 per type."""
    per_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    answer_types: collections.Counter = collections.Counter()
    for i in range(1500):
        f = sample_findings(MODALITIES[i % 3], phantom._rng(0, "balance", i, "image"))
        for qtype, qa in make_questions(f, phantom._rng(0, "balance", i, "text")):
            per_type[qtype][qa.answer] += 1
            answer_types[qa.answer_type] += 1
    assert 0.35 < answer_types[AnswerType.OPEN] / sum(answer_types.values()) < 0.65
    for qtype, counts in per_type.items():
        n = sum(counts.values())
        if {"yes", "no"} & set(counts):
            assert 0.35 <= counts["yes"] / n <= 0.65, (qtype, counts)
    for pair in (("left", "right"), ("small", "large"), ("bright", "dark"), ("normal", "enlarged")):
        n = sum(c[pair[0]] + c[pair[1]] for c in per_type.values())
        share = sum(c[pair[0]] for c in per_type.values()) / n
        assert 0.35 <= share <= 0.65, (pair, share)
    modalities = per_type["modality_open"]
    assert min(modalities.values()) / sum(modalities.values()) > 0.25


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
