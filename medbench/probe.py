"""``medbench data probe``: shortcut probes — how much of a VQA task is answerable without looking
where the question points.

Three gradient-boosted classifiers are trained on the task's train split and scored on its test
split, beside two baselines that need no image:

* **majority** — the majority rate: the share of the test questions that carry the most common test
  answer (always answering "no" on closed questions whose answers are 55 % "no" scores 0.55);
* **question prior** — for each test question, the most common train answer to the same question
  text (the train split's majority answer for a question never seen in train): what a model that
  memorised the question templates would answer. It is the fair baseline for open questions, whose
  question text names the answer vocabulary (a "which side" question is answered left or right).

The probes:

* **text-only** — a hashed bag of the question's words (unigrams and bigrams, lower-cased);
* **location-blind** — the same words plus a 32-bin grey-level histogram of the whole image;
* **RoI-only** — the same words plus a 32-bin histogram of the pixels inside the question's RoI and
  where that RoI is (its centroid as fractions of the image width and height, and its area
  fraction): what a model sees when it looks where the question points. The place matters for
  questions whose answer is a place ("which side is the lesion on?").

Histograms are normalised to sum to 1 (an empty RoI gives all zeros). Grey level is PIL's ``L``
conversion of the image as medbench feeds it to a model (:func:`medbench.images.open_image`:
16-bit, 32-bit and float images rescaled by their own min–max range; one that cannot be is
skipped with its reason). A mask PNG of another size than its image is resized to the image
with nearest-neighbour resampling; boxes are in image pixels. Every image is decoded once, however
many questions it has; nothing is cached on disk.

Multiple-choice questions (answer type ``mc``, OmniMedVQA) are not probed: their answers are options
that differ from question to question, so no fixed answer vocabulary exists for the classifiers to
learn. They are left out and counted (``mc_skipped`` in ``--json``, present only when there are
some, and a line in the text output); a split left without closed questions is refused with that
count.

Closed questions are scored directly. For open questions the classifier's classes are the answers
seen at least ``min_count`` times in train (the vocabulary); ``coverage`` is the fraction of open
test questions whose answer is in it, and accuracies count every open test question, an answer
outside the vocabulary as wrong. Answers are compared lower-cased with whitespace collapsed.

When some but not all samples of a task have an RoI (SLAKE), every probe runs on the samples with
one so that the four numbers describe the same questions; a task without RoIs runs text-only and
location-blind and reports why RoI-only is missing. The per-content-type rows use
``Sample.meta["content_type"]`` (``"all"`` where absent); their majority column applies the test
split's overall majority answer, so it averages to the overall majority rate.

Gates (``medbench.probe.GATES``; the embedded benchmark's, enforced by a test on phantom-vqa): on
closed questions text-only ≤ majority + 0.05, location-blind ≤ majority + 0.10, RoI-only ≥ majority +
0.30; on open questions the same margins over the question prior.

Classifier: scikit-learn's ``HistGradientBoostingClassifier`` with its defaults except early
stopping off, ``random_state=seed`` (a probe is deterministic, whatever the thread count) and
``max_bins=64``: on phantom-vqa's 22-answer open questions it fits about 3 times faster than the
default 255 bins, with every probe's accuracy within 0.05 of it (measured on phantom v2).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medbench.types import AnswerType, RoI, Sample

log = logging.getLogger(__name__)

HIST_BINS = 32
ROI_PLACE = ("centroid_x", "centroid_y", "area_fraction")
NGRAM_RANGE = (1, 2)
HASH_FEATURES = 2**20
DEFAULT_MIN_COUNT = 5
MAX_BINS = 64
PROBES = ("text", "location_blind", "roi_only")
PROBE_TITLES = {"majority": "majority", "question_prior": "question prior", "text": "text-only",
                "location_blind": "location-blind", "roi_only": "RoI-only"}
GATES = {"text": ("<=", 0.05), "location_blind": ("<=", 0.10), "roi_only": (">=", 0.30)}
GATE_BASELINE = {AnswerType.CLOSED.value: "majority", AnswerType.OPEN.value: "question_prior"}
MC_SKIP_REASON = ("multiple-choice questions are not probed: their options differ per question, so there is no "
                  "fixed answer vocabulary to classify into")


class ProbeError(ValueError):
    """A task the probes cannot run on; ``exit_code`` is 2 for a wrong kind of task, 1 for missing data."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ProbeScores:
    """Accuracy of the majority answer and of each probe on ``n`` test questions (None: probe not run)."""

    n: int
    majority: float
    question_prior: float
    text: float | None
    location_blind: float | None
    roi_only: float | None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "majority": self.majority, "question_prior": self.question_prior, "text": self.text,
                "location_blind": self.location_blind, "roi_only": self.roi_only}

    def gates(self, baseline: str) -> dict[str, dict[str, Any]]:
        """Each probe's gate against ``baseline`` (``majority`` or ``question_prior``): limit and verdict."""
        base = getattr(self, baseline)
        out = {}
        for name, (op, margin) in GATES.items():
            value = getattr(self, name)
            limit = base + margin
            ok = None if value is None else (value <= limit if op == "<=" else value >= limit)
            out[name] = {"value": value, "rule": f"{op} {baseline} + {margin:.2f}", "limit": limit, "passed": ok}
        return out


@dataclass(frozen=True)
class QuestionSetResult:
    """The probes on one answer type (closed or open) of a task.

    ``reason`` says why no probe ran (then ``overall`` is None); ``roi_only_reason`` why RoI-only did
    not. ``min_count``, ``vocabulary`` (answers kept as classes) and ``coverage`` are for open
    questions only.
    """

    answer_type: str
    n_train: int
    n: int
    majority_answer: str | None
    overall: ProbeScores | None
    by_content_type: dict[str, ProbeScores]
    roi_only_reason: str | None = None
    reason: str | None = None
    min_count: int | None = None
    vocabulary: int | None = None
    coverage: float | None = None

    def to_json(self) -> dict[str, Any]:
        scores = self.overall.to_json() if self.overall is not None else {
            "n": self.n, "majority": None, "question_prior": None, "text": None, "location_blind": None,
            "roi_only": None}
        gates = self.overall.gates(GATE_BASELINE[self.answer_type]) if self.overall is not None else None
        out: dict[str, Any] = {"n_train": self.n_train, **scores, "gates": gates,
                               "majority_answer": self.majority_answer,
                               "roi_only_reason": self.roi_only_reason, "reason": self.reason,
                               "by_content_type": {k: v.to_json() for k, v in self.by_content_type.items()}}
        if self.answer_type == AnswerType.OPEN.value:
            out.update(min_count=self.min_count, vocabulary=self.vocabulary, coverage=self.coverage)
        return out


@dataclass(frozen=True)
class RoiSubset:
    """Which samples the probes used: all, or only those with an RoI (``restricted``)."""

    restricted: bool
    train_without_roi: int
    test_without_roi: int

    def to_json(self) -> dict[str, Any]:
        return {"restricted": self.restricted, "train_without_roi": self.train_without_roi,
                "test_without_roi": self.test_without_roi}


@dataclass(frozen=True)
class ProbeReport:
    """Everything ``medbench data probe`` prints; :meth:`to_json` is the ``--json`` document."""

    task: str
    task_version: str
    n_train: int
    n_test: int
    roi_subset: RoiSubset
    closed: QuestionSetResult
    open: QuestionSetResult
    seed: int
    limit_train: int | None
    skipped: list[dict[str, str]] = field(default_factory=list)
    mc_skipped: dict[str, int] = field(default_factory=dict)  # split → multiple-choice questions left out

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "task_version": self.task_version,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "roi_subset": self.roi_subset.to_json(),
            "closed": self.closed.to_json(),
            "open": self.open.to_json(),
            "settings": {"seed": self.seed, "limit_train": self.limit_train, "hist_bins": HIST_BINS, "roi_place": list(ROI_PLACE),
                         "ngram_range": list(NGRAM_RANGE), "min_count": self.open.min_count,
                         "classifier": f"HistGradientBoostingClassifier(max_bins={MAX_BINS})"},
            "skipped": list(self.skipped),
            **({"mc_skipped": {**self.mc_skipped, "reason": MC_SKIP_REASON}} if any(self.mc_skipped.values()) else {}),
        }


def normalise_answer(answer: str) -> str:
    return " ".join(str(answer).lower().split())


def grey_histogram(pixels: np.ndarray) -> np.ndarray:
    """Normalised ``HIST_BINS``-bin histogram of uint8 grey levels (all zeros for no pixels)."""
    pixels = np.asarray(pixels, dtype=np.uint8).ravel()
    if pixels.size == 0:
        return np.zeros(HIST_BINS, dtype=np.float64)
    counts = np.bincount(pixels // (256 // HIST_BINS), minlength=HIST_BINS)
    return counts / pixels.size


def _grey(path: str) -> np.ndarray:
    """The image at ``path`` as a 2-D uint8 grey array (high-depth images rescaled as for a model)."""
    from medbench.images import open_image

    return np.asarray(open_image(path, keep_grey=True).convert("L"))


def roi_mask(roi: RoI, width: int, height: int) -> np.ndarray:
    """``roi`` as a boolean (height, width) mask; a mask PNG of another size is resized nearest."""
    if roi.mask_path is None:
        return roi.to_mask(width, height)
    from PIL import Image

    with Image.open(roi.mask_path) as im:
        mask = im.convert("L")
        if mask.size != (width, height):
            mask = mask.resize((width, height), Image.Resampling.NEAREST)
        return np.asarray(mask) > 0


def roi_features(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The RoI-only probe's image features: the grey histogram inside ``mask``, then the mask's
    centroid (x, y as fractions of width and height) and area fraction (zeros for an empty mask)."""
    ys, xs = np.nonzero(mask)
    place = (np.zeros(len(ROI_PLACE)) if len(ys) == 0 else
             np.array([xs.mean() / mask.shape[1], ys.mean() / mask.shape[0], len(ys) / mask.size]))
    return np.concatenate([grey_histogram(grey[mask]), place])


def image_features(samples: list[Sample], *, with_roi: bool, progress: bool = True,
                   desc: str = "histograms") -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
    """Whole-image and RoI histograms of every sample, opening each image once.

    Returns ``(whole, roi, failed)``: arrays of shape (n, HIST_BINS) and (n, HIST_BINS + 3) (``roi`` None unless
    ``with_roi``) and the reason for every sample index whose image or mask could not be read.
    """
    from tqdm import tqdm

    from medbench.console import progress_bars_enabled

    by_image: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_image.setdefault(s.image_path, []).append(i)
    whole = np.zeros((len(samples), HIST_BINS))
    inside = np.zeros((len(samples), HIST_BINS + len(ROI_PLACE))) if with_roi else None
    failed: dict[int, str] = {}
    for path, indices in tqdm(by_image.items(), desc=desc, unit="image",
                              disable=not (progress and progress_bars_enabled())):
        try:
            grey = _grey(path)
        except Exception as exc:
            failed.update({i: f"image-unreadable: {type(exc).__name__}: {exc}" for i in indices})
            continue
        whole[indices] = grey_histogram(grey)
        if inside is None:
            continue
        per_roi: dict[tuple[Any, ...], np.ndarray | str] = {}
        for i in indices:
            roi = samples[i].roi
            if roi is None:
                continue
            key = (roi.mask_path, roi.boxes)
            if key not in per_roi:
                try:
                    per_roi[key] = roi_features(grey, roi_mask(roi, grey.shape[1], grey.shape[0]))
                except Exception as exc:
                    per_roi[key] = f"mask-unreadable: {type(exc).__name__}: {exc}"
            value = per_roi[key]
            if isinstance(value, str):
                failed[i] = value
            else:
                inside[i] = value
    return whole, inside, failed


def text_features(train_questions: list[str], test_questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hashed binary bag of unigrams and bigrams, restricted to the columns that occur in train."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=HASH_FEATURES, ngram_range=NGRAM_RANGE, token_pattern=r"(?u)\b\w+\b",
                            lowercase=True, alternate_sign=False, norm=None, binary=True)
    train, test = vec.transform(train_questions), vec.transform(test_questions)
    used = np.unique(train.tocsr().indices)
    if used.size == 0:
        return np.zeros((len(train_questions), 1)), np.zeros((len(test_questions), 1))
    return train[:, used].toarray(), test[:, used].toarray()


def fit_predict(x_train: np.ndarray, y_train: list[str], x_test: np.ndarray, seed: int) -> np.ndarray:
    """Train the gradient-boosted classifier and predict ``x_test`` (a single class is predicted as is).

    Runs on one OpenMP thread: at a few thousand samples the thread pool costs more than it saves,
    and on a busy machine it can slow a fit down tenfold (the result is the same either way).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    labels = np.asarray(y_train, dtype=object)
    if len(set(y_train)) == 1:
        return np.full(len(x_test), labels[0], dtype=object)
    clf = HistGradientBoostingClassifier(early_stopping=False, max_bins=MAX_BINS, random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):
        clf.fit(x_train, labels)
        return clf.predict(x_test)


def majority_answer(answers: list[str]) -> str:
    """The most frequent answer (ties: alphabetical first)."""
    counts = Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a))


def _content_type(sample: Sample) -> str:
    value = sample.meta.get("content_type")
    return str(value) if value not in (None, "") else "all"


def _scores(correct: dict[str, np.ndarray], rows: np.ndarray) -> ProbeScores:
    def acc(name: str) -> float | None:
        return None if name not in correct else float(correct[name][rows].mean())

    return ProbeScores(n=int(rows.sum()), majority=float(correct["majority"][rows].mean()),
                       question_prior=float(correct["question_prior"][rows].mean()), text=acc("text"),
                       location_blind=acc("location_blind"), roi_only=acc("roi_only"))


def _probe_set(answer_type: AnswerType, train: list[Sample], test: list[Sample], hist: dict[str, np.ndarray],
               train_rows: np.ndarray, test_rows: np.ndarray, *, seed: int, roi_only_reason: str | None,
               min_count: int | None) -> QuestionSetResult:
    """Fit and score the probes on one answer type; ``hist`` holds the histograms of train + test rows."""
    kind = answer_type.value
    y_train = [normalise_answer(s.answer) for s in train]
    y_test = np.asarray([normalise_answer(s.answer) for s in test], dtype=object)
    if not test:
        return QuestionSetResult(kind, len(train), 0, None, None, {}, roi_only_reason,
                                 reason=f"no {kind} test questions", min_count=min_count)
    if not train:
        return QuestionSetResult(kind, 0, len(test), None, None, {}, roi_only_reason,
                                 reason=f"no {kind} train questions", min_count=min_count)
    majority = majority_answer(list(y_test))
    fallback = majority_answer(y_train)
    by_question: dict[str, list[str]] = {}
    for s, a in zip(train, y_train):
        by_question.setdefault(normalise_answer(s.question), []).append(a)
    prior = {q: majority_answer(answers) for q, answers in by_question.items()}
    question_prior = np.asarray([prior.get(normalise_answer(s.question), fallback) for s in test], dtype=object)
    vocabulary, coverage, keep = None, None, np.ones(len(train), dtype=bool)
    if min_count is not None:
        counts = Counter(y_train)
        vocab = {a for a, c in counts.items() if c >= min_count}
        vocabulary = len(vocab)
        coverage = float(np.mean([a in vocab for a in y_test]))
        if len(vocab) < 2:
            return QuestionSetResult(kind, len(train), len(test), majority, None, {}, roi_only_reason,
                                     reason=f"fewer than 2 answers seen at least {min_count} times in train",
                                     min_count=min_count, vocabulary=vocabulary, coverage=coverage)
        keep = np.asarray([a in vocab for a in y_train])
    fit_labels = [a for a, k in zip(y_train, keep) if k]
    text_train, text_test = text_features([s.question for s, k in zip(train, keep) if k], [s.question for s in test])
    blocks = {"text": (text_train, text_test),
              "location_blind": (np.hstack([text_train, hist["whole"][train_rows][keep]]),
                                 np.hstack([text_test, hist["whole"][test_rows]]))}
    if roi_only_reason is None:
        blocks["roi_only"] = (np.hstack([text_train, hist["roi"][train_rows][keep]]),
                              np.hstack([text_test, hist["roi"][test_rows]]))
    correct = {"majority": y_test == majority, "question_prior": question_prior == y_test}
    for name, (x_train, x_test) in blocks.items():
        correct[name] = fit_predict(x_train, fit_labels, x_test, seed) == y_test
    types = np.asarray([_content_type(s) for s in test], dtype=object)
    by_type = {t: _scores(correct, types == t) for t in sorted(set(types))}
    return QuestionSetResult(kind, len(train), len(test), majority, _scores(correct, np.ones(len(test), bool)),
                             by_type, roi_only_reason, min_count=min_count, vocabulary=vocabulary, coverage=coverage)


def _limit(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ProbeError(f"--limit-train must be at least 1, got {limit}", exit_code=2)
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
    return [samples[i] for i in keep]


def run_probes(task: Any, *, seed: int = 0, limit_train: int | None = None, min_count: int = DEFAULT_MIN_COUNT,
               include_open: bool = True, progress: bool = True) -> ProbeReport:
    """Run the shortcut probes on ``task`` (a :class:`~medbench.task.Task` instance).

    ``limit_train`` trains on a random subset (drawn with ``seed``); ``include_open=False`` skips the
    open-question probes (the slow, multi-class part).
    """
    if getattr(task, "kind", None) != "vqa":
        raise ProbeError(f"{task.name} is a {task.kind} task; shortcut probes need a VQA task "
                         "(closed/open questions)", exit_code=2)
    if min_count < 1:
        raise ProbeError(f"--min-count must be at least 1, got {min_count}", exit_code=2)
    wanted = (AnswerType.CLOSED, AnswerType.OPEN)
    train_loaded, test_loaded = task.load(task.train_split), task.load(task.eval_split)
    mc_skipped = {split: sum(s.answer_type == AnswerType.MC for s in loaded)
                  for split, loaded in ((task.train_split, train_loaded), (task.eval_split, test_loaded))}
    if any(mc_skipped.values()):
        log.warning("%s: left out %s multiple-choice questions (%s)", task.name,
                    " + ".join(f"{n} {split}" for split, n in mc_skipped.items()), MC_SKIP_REASON)
    mc_note = (f" (left out {' + '.join(f'{n} {split}' for split, n in mc_skipped.items())} multiple-choice "
               f"questions: {MC_SKIP_REASON})" if any(mc_skipped.values()) else "")
    train_all = [s for s in train_loaded if s.answer_type in wanted]
    test_all = [s for s in test_loaded if s.answer_type in wanted]
    if not train_all:
        raise ProbeError(f"{task.name}: the {task.train_split} split has no VQA questions to train the probes on"
                         f"{mc_note}")
    has_roi = any(s.roi is not None for s in train_all + test_all)
    subset = RoiSubset(restricted=False, train_without_roi=sum(s.roi is None for s in train_all),
                       test_without_roi=sum(s.roi is None for s in test_all))
    if has_roi and (subset.train_without_roi or subset.test_without_roi):
        subset = RoiSubset(True, subset.train_without_roi, subset.test_without_roi)
        train_all = [s for s in train_all if s.roi is not None]
        test_all = [s for s in test_all if s.roi is not None]
        log.info("%s: probing the %d train and %d test questions with an RoI", task.name, len(train_all), len(test_all))
    if not train_all:
        raise ProbeError(f"{task.name}: no {task.train_split} question has an RoI")
    if not any(s.answer_type == AnswerType.CLOSED for s in test_all):
        where = " with an RoI" if subset.restricted else ""
        raise ProbeError(f"{task.name}: the {task.eval_split} split has no closed questions{where} to score{mc_note}")
    train_all = _limit(train_all, limit_train, seed)
    roi_reason = None if has_roi else f"needs question RoIs and {task.name} has none"
    samples = train_all + test_all
    whole, inside, failed = image_features(samples, with_roi=has_roi, progress=progress, desc=f"histograms {task.name}")
    skipped = [{"id": samples[i].id, "reason": failed[i]} for i in sorted(failed)]
    for row in skipped:
        log.warning("skipped %s: %s", row["id"], row["reason"])
    hist = {"whole": whole, "roi": inside}
    ok = [i not in failed for i in range(len(samples))]
    split_rows = {"train": [i for i in range(len(train_all)) if ok[i]],
                  "test": [i for i in range(len(train_all), len(samples)) if ok[i]]}
    results = {}
    for answer_type in wanted:
        if answer_type == AnswerType.OPEN and not include_open:
            results[answer_type] = QuestionSetResult(answer_type.value, 0, 0, None, None, {}, roi_reason,
                                                     reason="not requested (closed questions only)",
                                                     min_count=min_count)
            continue
        tr = np.asarray([i for i in split_rows["train"] if samples[i].answer_type == answer_type], dtype=int)
        te = np.asarray([i for i in split_rows["test"] if samples[i].answer_type == answer_type], dtype=int)
        results[answer_type] = _probe_set(
            answer_type, [samples[i] for i in tr], [samples[i] for i in te], hist, tr, te, seed=seed,
            roi_only_reason=roi_reason, min_count=min_count if answer_type == AnswerType.OPEN else None)
    closed = results[AnswerType.CLOSED]
    if closed.reason is not None:
        where = " with an RoI" if subset.restricted else ""
        raise ProbeError(f"{task.name}: cannot probe closed questions{where}: {closed.reason}")
    return ProbeReport(task=task.name, task_version=str(getattr(task, "version", "")),
                       n_train=len(split_rows["train"]), n_test=len(split_rows["test"]), roi_subset=subset,
                       closed=closed, open=results[AnswerType.OPEN], seed=seed, limit_train=limit_train,
                       skipped=skipped, mc_skipped=mc_skipped)


def probe_task(name: str, data_root: str | None = None, **options: Any) -> ProbeReport:
    """Load registered task ``name`` as ``medbench data check`` does and run :func:`run_probes`."""
    from medbench.datacheck import make_task

    return run_probes(make_task(name, data_root), **options)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _table(result: QuestionSetResult) -> str:
    from tabulate import tabulate

    assert result.overall is not None
    rows = [["overall", result.overall.n] + [_fmt(getattr(result.overall, k)) for k in PROBE_TITLES]]
    if list(result.by_content_type) != ["all"]:
        rows += [[t, s.n] + [_fmt(getattr(s, k)) for k in PROBE_TITLES] for t, s in result.by_content_type.items()]
    return tabulate(rows, headers=["content type", "n", *PROBE_TITLES.values()], tablefmt="github",
                    disable_numparse=True)


def render_text(report: ProbeReport) -> str:
    """The human-readable probe tables."""
    lines = [f"shortcut probes: {report.task} (version {report.task_version}), trained on {report.n_train} "
             f"train questions, scored on {report.n_test} test questions (seed {report.seed})"]
    sub = report.roi_subset
    if sub.restricted:
        lines.append(f"questions with an RoI only: left out {sub.train_without_roi} train and "
                     f"{sub.test_without_roi} test questions without one")
    for title, result in (("closed", report.closed), ("open", report.open)):
        lines += ["", f"{title} questions"]
        if result.overall is None:
            lines.append(f"  not probed: {result.reason}")
            continue
        lines.append(f"majority answer {result.majority_answer!r} (most common test answer); "
                     f"{result.n_train} train questions")
        if result.min_count is not None:
            lines.append(f"answer vocabulary: {result.vocabulary} answers seen >= {result.min_count} times in train; "
                         f"coverage {_fmt(result.coverage)} of open test questions (the rest count as wrong)")
        lines.append(_table(result))
        baseline = GATE_BASELINE[title]
        verdicts = [f"{PROBE_TITLES[name]} {_fmt(g['value'])} {g['rule'].split(' ', 1)[0]} {_fmt(g['limit'])}: "
                    f"{'pass' if g['passed'] else 'FAIL' if g['passed'] is False else 'not run'}"
                    for name, g in result.overall.gates(baseline).items()]
        lines.append(f"gates (vs {PROBE_TITLES[baseline]}): " + "; ".join(verdicts))
        if result.roi_only_reason:
            lines.append(f"RoI-only not run: {result.roi_only_reason}")
    if any(report.mc_skipped.values()):
        counts = ", ".join(f"{n} {split}" for split, n in report.mc_skipped.items())
        lines += ["", f"left out multiple-choice questions ({counts}): {MC_SKIP_REASON}"]
    if report.skipped:
        lines += ["", f"skipped {len(report.skipped)} questions whose image or mask could not be read (--json lists them)"]
    return "\n".join(lines)
