"""Shortcut probes (``medbench data probe``): what each probe can see, the JSON document, bad input,
and the phantom-vqa gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from fixtures_datasets import write_slake
from PIL import Image

from medbench import probe
from medbench.cli import main
from medbench.probe import ProbeError, run_probes
from medbench.task import Task
from medbench.types import AnswerType, RoI, Sample

SIZE = 32  # image side; RoI masks are stored at half this size
LEFT, RIGHT = (slice(8, 24), slice(2, 14)), (slice(8, 24), slice(18, 30))


class Synthetic(Task):
    """Small generated VQA task; what decides each closed answer depends on ``mode``.

    ``roi``: one half of every image is bright, the other dark; "is the marked region bright?"
    points (through its RoI) at a random half — only the RoI's pixels tell. ``text``: the question
    names ``alpha`` (yes) or ``beta`` (no) over a noise image. ``prior``: like ``roi`` but the yes
    rate is ``yes_rate[split]``. Every image also has one open question ("which side is bright?",
    RoI = the left half, so only the RoI-only probe can answer it).
    """

    name = "synthetic"
    kind = "vqa"
    version = "1"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, root: Path, mode: str = "roi", *, n: dict[str, int] | None = None, with_roi: bool = True,
                 yes_rate: dict[str, float] | None = None, kind: str = "vqa"):
        super().__init__(root)
        self.mode, self.with_roi, self.kind = mode, with_roi, kind
        self.n = n or {"train": 200, "test": 100}
        self.yes_rate = yes_rate or {"train": 0.5, "test": 0.5}
        self._cache: dict[str, list[Sample]] = {}

    def _mask(self, name: str, region: tuple[slice, slice]) -> str:
        path = self.data_root / f"mask-{name}.png"
        if not path.exists():
            full = np.zeros((SIZE, SIZE), bool)
            full[region] = True
            Image.fromarray((full[::2, ::2] * 255).astype(np.uint8)).save(path)
        return str(path)

    def load(self, split: str) -> list[Sample]:
        if split not in self._cache:
            self._cache[split] = self._generate(split)
        return self._cache[split]

    def _generate(self, split: str) -> list[Sample]:
        rng = np.random.default_rng({"train": 1, "test": 2}[split])
        out = []
        for i in range(self.n[split]):
            grey = rng.integers(70, 110, size=(SIZE, SIZE))
            bright_left = bool(rng.integers(2))
            grey[LEFT] = rng.integers(190, 230, size=(16, 12)) if bright_left else rng.integers(10, 50, size=(16, 12))
            grey[RIGHT] = rng.integers(10, 50, size=(16, 12)) if bright_left else rng.integers(190, 230, size=(16, 12))
            image = self.data_root / f"{split}-{i}.png"
            Image.fromarray(grey.astype(np.uint8)).convert("RGB").save(image)
            if self.mode == "text":
                yes = bool(rng.integers(2))
                question, side = f"is there an {'alpha' if yes else 'beta'} marker here?", "left"
            else:
                yes = bool(rng.random() < self.yes_rate[split])
                side = "left" if yes == bright_left else "right"
                question = str(rng.choice(["is the marked region bright?", "does the marked area look bright?"]))
            roi = RoI(mask_path=self._mask(side, LEFT if side == "left" else RIGHT), label=side)
            meta = {"content_type": "color" if i % 2 else "size"}
            out.append(Sample(f"{split}-{i}-q0", str(image), question, "yes" if yes else "no", AnswerType.CLOSED,
                              split, roi if self.with_roi else None, meta))
            out.append(Sample(f"{split}-{i}-q1", str(image), "which side is bright?",
                              "left" if bright_left else "right", AnswerType.OPEN, split,
                              RoI(mask_path=self._mask("left", LEFT)) if self.with_roi else None,
                              {"content_type": "position"}))
        return out


def test_roi_probe_sees_what_the_others_cannot(tmp_path: Path) -> None:
    report = run_probes(Synthetic(tmp_path, "roi"), progress=False)
    closed = report.closed.overall
    assert closed.n == 100 and report.n_train == 400 and report.n_test == 200
    assert 0.4 <= closed.majority <= 0.6
    assert closed.roi_only >= closed.majority + 0.3
    assert closed.text <= closed.majority + 0.1
    assert closed.location_blind <= closed.majority + 0.15
    assert set(report.closed.by_content_type) == {"color", "size"}
    for scores in report.closed.by_content_type.values():
        assert scores.roi_only >= scores.majority + 0.25
    assert run_probes(Synthetic(tmp_path, "roi"), progress=False).to_json() == report.to_json()  # deterministic


def test_text_probe_wins_when_the_question_decides(tmp_path: Path) -> None:
    closed = run_probes(Synthetic(tmp_path, "text"), progress=False).closed.overall
    assert closed.text >= 0.95 and closed.text >= closed.majority + 0.3


def test_majority_rate_and_question_prior(tmp_path: Path) -> None:
    """The majority rate is the most common TEST answer's share; the question prior answers each test
    question with the most common train answer to the same question text."""
    task = Synthetic(tmp_path, n={"train": 150, "test": 60}, yes_rate={"train": 0.8, "test": 0.2})
    report = run_probes(task, progress=False, include_open=False)
    train_closed = [s for s in task.load("train") if s.answer_type is AnswerType.CLOSED]
    test_closed = [s for s in task.load("test") if s.answer_type is AnswerType.CLOSED]
    assert report.closed.majority_answer == "no" and report.closed.n_train == 150
    assert report.closed.overall.majority == pytest.approx(np.mean([s.answer == "no" for s in test_closed]))
    assert report.closed.overall.majority > 0.6
    answers: dict[str, list[str]] = {}
    for s in train_closed:
        answers.setdefault(s.question.lower(), []).append(s.answer)
    prior = {q: max(sorted(set(a)), key=a.count) for q, a in answers.items()}
    expected = np.mean([prior.get(s.question.lower(), "yes") == s.answer for s in test_closed])
    assert report.closed.overall.question_prior == pytest.approx(expected) and expected < 0.4
    gates = report.closed.overall.gates("majority")
    assert gates["text"]["limit"] == pytest.approx(report.closed.overall.majority + 0.05)
    assert gates["roi_only"]["rule"] == ">= majority + 0.30"
    assert report.open.overall is None and report.open.reason


def test_each_image_is_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = probe._grey
    monkeypatch.setattr(probe, "_grey", lambda path: opened.append(path) or real(path))
    run_probes(Synthetic(tmp_path, n={"train": 40, "test": 20}), progress=False, include_open=False)
    assert len(opened) == len(set(opened)) == 60


def test_masks_histograms_and_deep_images(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[255, 0], [0, 0]], np.uint8)).save(path)
    mask = probe.roi_mask(RoI(mask_path=str(path)), 4, 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False]] + [[False] * 4] * 2
    assert probe.roi_mask(RoI(boxes=((1, 1, 3, 2),)), 4, 3).sum() == 2
    pixels = np.array([0, 7, 8, 255, 255], np.uint8)
    hist = probe.grey_histogram(pixels)
    assert hist[0] == pytest.approx(0.4) and hist[1] == pytest.approx(0.2) and hist[31] == pytest.approx(0.4)
    assert probe.grey_histogram(np.array([], np.uint8)).sum() == 0
    deep = tmp_path / "deep.png"
    Image.fromarray(np.array([[1000, 3000], [5000, 5000]], np.uint16)).save(deep)
    assert probe._grey(str(deep)).tolist() == [[0, 128], [255, 255]]


def test_json_document(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(run_probes(Synthetic(tmp_path, n={"train": 60, "test": 30}), progress=False).to_json()))
    assert set(doc) == {"task", "task_version", "n_train", "n_test", "roi_subset", "closed", "open", "settings",
                        "skipped"}
    assert (doc["task"], doc["task_version"], doc["n_train"], doc["n_test"]) == ("synthetic", "1", 120, 60)
    score_keys = {"n", "majority", "question_prior", "text", "location_blind", "roi_only"}
    assert set(doc["closed"]) == score_keys | {"n_train", "majority_answer", "roi_only_reason", "reason",
                                               "by_content_type", "gates"}
    assert set(doc["closed"]["gates"]) == {"text", "location_blind", "roi_only"}
    assert set(doc["open"]) == set(doc["closed"]) | {"min_count", "vocabulary", "coverage"}
    for block in (doc["closed"], doc["open"]):
        assert block["reason"] is None and block["roi_only_reason"] is None
        for scores in [block, *block["by_content_type"].values()]:
            assert score_keys <= set(scores)
            assert all(0 <= scores[k] <= 1 for k in score_keys - {"n"})
    assert doc["open"]["coverage"] == 1.0 and doc["open"]["vocabulary"] == 2
    assert doc["settings"]["hist_bins"] == 32 and doc["roi_subset"]["restricted"] is False


def test_open_vocabulary_and_coverage(tmp_path: Path) -> None:
    import dataclasses

    task = Synthetic(tmp_path, n={"train": 60, "test": 30})
    for split, rare in (("train", 3), ("test", 5)):
        opened = [i for i, s in enumerate(task.load(split)) if s.answer_type is AnswerType.OPEN][:rare]
        for i in opened:
            task._cache[split][i] = dataclasses.replace(task._cache[split][i], answer="Middle ")
    result = run_probes(task, progress=False).open
    assert (result.vocabulary, result.min_count, result.n) == (2, 5, 30)
    assert result.coverage == pytest.approx(25 / 30)
    assert result.overall.roi_only == pytest.approx(25 / 30)  # every in-vocabulary answer, no other
    for name in ("majority", "text", "location_blind"):
        assert getattr(result.overall, name) <= 25 / 30
    wider = run_probes(task, progress=False, min_count=3).open
    assert wider.vocabulary == 3 and wider.coverage == 1.0


def test_task_without_rois_skips_the_roi_probe(tmp_path: Path) -> None:
    report = run_probes(Synthetic(tmp_path, with_roi=False, n={"train": 60, "test": 30}), progress=False)
    for block in (report.closed, report.open):
        assert block.overall.roi_only is None and "needs question RoIs" in block.roi_only_reason
        assert block.overall.text is not None and block.overall.location_blind is not None
    assert report.to_json()["closed"]["roi_only"] is None
    assert "RoI-only not run: needs question RoIs and synthetic has none" in probe.render_text(report)


def test_bad_tasks(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="report task") as info:
        run_probes(Synthetic(tmp_path, kind="report"), progress=False)
    assert info.value.exit_code == 2
    with pytest.raises(ProbeError, match="no VQA questions to train"):
        run_probes(Synthetic(tmp_path, n={"train": 0, "test": 10}), progress=False)
    text_only = Synthetic(tmp_path, n={"train": 10, "test": 10})
    text_only._cache["test"] = [s for s in text_only.load("test") if s.answer_type is AnswerType.OPEN]
    with pytest.raises(ProbeError, match="no closed questions"):
        run_probes(text_only, progress=False)


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "probe", "--task", "phantom-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medbench: error: phantom-report is a report task")
    assert main(["data", "probe", "--task", "phantom-vq"]) == 2
    assert "Did you mean 'phantom-vqa'" in capsys.readouterr().err


def test_cli_on_slake_roi_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_slake(tmp_path)
    assert main(["-q", "data", "probe", "--task", "slake", "--data-root", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["roi_subset"] == {"restricted": True, "train_without_roi": 1, "test_without_roi": 2}
    assert doc["n_train"] == 3 and doc["n_test"] == 1
    assert doc["closed"]["n"] == 1 and doc["closed"]["roi_only"] is not None
    assert list(doc["closed"]["by_content_type"]) == ["Organ"]
    assert doc["open"]["reason"] == "no open test questions"
    assert main(["data", "probe", "--task", "slake", "--data-root", str(root)]) == 0
    assert "questions with an RoI only" in capsys.readouterr().out


def test_phantom_vqa_probe_gates(phantom_v3_probes) -> None:
    """The embedded benchmark's gates: the answer needs the RoI (closed questions against the
    majority rate, open questions against the question prior)."""
    report = phantom_v3_probes
    for block, baseline in ((report.closed, "majority"), (report.open, "question_prior")):
        table = json.dumps(block.to_json(), indent=1)
        scores = block.overall
        base = getattr(scores, baseline)
        assert scores.text <= base + 0.05, table
        assert scores.location_blind <= base + 0.10, table
        assert scores.roi_only >= base + 0.30, table
        assert all(g["passed"] for g in scores.gates(baseline).values()), table


def test_roi_features_by_hand() -> None:
    """Histogram inside the mask, then the mask's centroid (x, y fractions) and area fraction."""
    grey = np.zeros((4, 8), dtype=np.uint8)
    grey[1, 6] = 255
    mask = np.zeros((4, 8), dtype=bool)
    mask[1, 6] = mask[3, 6] = True
    features = probe.roi_features(grey, mask)
    assert features.shape == (probe.HIST_BINS + 3,)
    assert features[0] == 0.5 and features[probe.HIST_BINS - 1] == 0.5  # one black, one white pixel
    assert features[probe.HIST_BINS:].tolist() == [6 / 8, 2 / 4, 2 / 32]
    assert not probe.roi_features(grey, np.zeros((4, 8), dtype=bool)).any()
