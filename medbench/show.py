"""One sample of one or more runs as a PNG in the style of the A³TUNE paper's Figures 1 and 6.

Panels, left to right: the image in the model-input frame (the first run's geometry) with the GT
RoI outlined in red; the weak labels when a run has them (green segments in red boxes); then one
attention heatmap per run (min-max scaled, bilinearly upsampled, as the Coverage/Intensity metrics
see it), titled ``tuning+decoding`` (``base``, ``LoRA``, ``A3TUNE``) with that sample's Coverage and
Intensity and, from the raw map, its RoI mass, RoI lift and peak (:func:`sample_scores`; also in
:attr:`ShowResult.scores`). The caption holds the question, the reference answer and each run's prediction (green
when the VQA rule credits it, red when not, black for reports).

Weak labels come from ``RUN_DIR/weak_labels/<id>.npy`` or a predictions row's ``weak_labels``: a
G·G or G×G grid, K×G·G or K×G×G segments, or H×W / K×H×W masks in the model-input frame.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medbench import attention_grid
from medbench.registry import METHODS
from medbench.selection import eval_split
from medbench.types import AnswerType, Sample

__all__ = ["ShowError", "ShowResult", "RunView", "load_run", "run_label", "sample_scores", "show",
           "weak_label_segments"]

log = logging.getLogger("medbench")
PANEL_IN = 3.0


class ShowError(ValueError):
    """A run directory, sample id or attention map that ``medbench show`` cannot use."""


@dataclass(frozen=True)
class RunView:
    """What ``show`` needs from one run directory."""

    run_dir: Path
    config: dict[str, Any]
    geometry: dict[str, Any]
    tuning: str
    decoding: str
    rows: dict[str, dict[str, Any]]


@dataclass
class ShowResult:
    """The written figure: its path, pixel size ``(width, height)``, panel titles and, per run
    title, the sample's attention scores (see :func:`sample_scores`)."""

    path: Path
    sample_id: str
    size: tuple[int, int]
    panels: list[str] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def run_label(tuning: str, decoding: str) -> str:
    """The panel title of a run, e.g. ``base+greedy`` or ``A3TUNE+greedy`` (the tuning method's label)."""
    name = "base" if tuning == "none" else METHODS.entry(tuning).info.get("label", tuning) if tuning in METHODS else tuning
    return f"{name}+{decoding}"


def load_run(run_dir: str | Path) -> RunView:
    """Read ``run.json`` and the latest prediction row of every sample."""
    from medbench.predictions import read_rows
    from medbench.scoring import latest_rows

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists() or not (run_dir / "predictions.jsonl").exists():
        raise ShowError(f"{run_dir} is not a medbench run directory (needs run.json and predictions.jsonl)")
    info = json.loads((run_dir / "run.json").read_text())
    geometry = info.get("geometry")
    if not geometry or "grid_size" not in geometry:
        raise ShowError(f"{run_dir}/run.json has no geometry record; rerun it with a current medbench")
    _, rows = read_rows(run_dir / "predictions.jsonl")
    tuning, decoding = str(info.get("tuning") or "none"), str(info.get("decoding") or "greedy")
    return RunView(run_dir, dict(info["config"]), dict(geometry), tuning, decoding, latest_rows(rows))


def _find_sample(task: Any, sample_id: str, limit: int | None, split: str | None = None) -> Sample:
    samples = sorted(task.load(eval_split(task, split)), key=lambda s: s.id)
    for sample in samples:
        if sample.id == sample_id:
            return sample
    from medbench.metrics import preview_ids

    shown = preview_ids([s.id for s in samples[: limit or len(samples)]], 3)
    raise ShowError(f"unknown sample id {sample_id!r} in task {task.name} (ids look like {shown})")


def _row(run: RunView, sample_id: str) -> dict[str, Any]:
    from medbench.metrics import preview_ids

    row = run.rows.get(sample_id)
    if row is None:
        raise ShowError(f"sample {sample_id!r} has no prediction in {run.run_dir} "
                        f"(it has {preview_ids(run.rows, 3)})")
    if row.get("error"):
        raise ShowError(f"sample {sample_id!r} failed in {run.run_dir}: {row['error']}")
    attn = row.get("attention")
    if not attn or not attn.get("grid"):
        raise ShowError(f"sample {sample_id!r} has no attention map in {run.run_dir} "
                        "(runs record attention unless it was turned off)")
    return row


def frame_image(sample: Sample, geometry: dict[str, Any]) -> np.ndarray:
    """The sample's image as the backbone saw it: H×W×3 uint8 in the model-input frame."""
    from medbench.geometry import PAD, apply_geometry, pad_image
    from medbench.images import open_image

    im = open_image(sample.image_path, keep_grey=True)  # high-depth images rescaled as for the model
    image = pad_image(im, geometry) if geometry.get("mode") == PAD else im.convert("RGB")
    return np.asarray(apply_geometry(image, geometry, Image.BICUBIC))


def _roi_mask(sample: Sample, geometry: dict[str, Any]) -> np.ndarray | None:
    from medbench.geometry import roi_in_frame

    if sample.roi is None:
        return None
    with Image.open(sample.image_path) as im:
        size = im.size
    return roi_in_frame(sample.roi, size, geometry)


def _attention(row: dict[str, Any]) -> np.ndarray:
    try:
        return attention_grid.decode(row["attention"], check=True)
    except attention_grid.AttentionGridError as exc:
        raise ShowError(f"sample {row['id']!r}: {exc}") from None


def sample_scores(grid: np.ndarray, roi: np.ndarray | None) -> dict[str, float]:
    """The sample's attention metrics: none without an RoI; the raw-map ones only where defined."""
    from medbench.metrics.attention import coverage_intensity, roi_share

    if roi is None or not roi.any():
        return {}
    coverage, intensity = coverage_intensity(grid, roi)
    scores = {"coverage": coverage, "intensity": intensity}
    try:
        scores.update(roi_share(grid, roi)._asdict())
    except ValueError as exc:
        log.warning("no RoI share for this map: %s", exc)
    return scores


def _score_title(scores: dict[str, float]) -> str:
    """The heatmap title lines of :func:`sample_scores`."""
    if not scores:
        return ""
    text = f"\ncoverage {scores['coverage']:.2f} · intensity {scores['intensity']:.2f}"
    if "roi_mass" in scores:
        text += (f"\nRoI mass {scores['roi_mass']:.3f} · lift {scores['roi_lift']:.2f}"
                 f" · peak {scores['attention_peak']:.2f}")
    return text


def weak_label_segments(data: Any, grid_size: int, frame_hw: tuple[int, int]) -> np.ndarray | None:
    """Weak labels as K×H×W floats in the model-input frame, or ``None`` for an unknown layout."""
    arr = np.asarray(data, dtype=np.float64)
    g, n = int(grid_size), int(grid_size) ** 2
    if arr.ndim == 1 and arr.size in (0, n):
        arr = arr.reshape(-1, g, g)
    elif arr.ndim == 2 and arr.shape in ((g, g), frame_hw):
        arr = arr[None]
    elif arr.ndim == 2 and arr.shape[1] == n:
        arr = arr.reshape(-1, g, g)
    elif not (arr.ndim == 3 and arr.shape[1:] in ((g, g), frame_hw)):
        return None
    if not np.all(np.isfinite(arr)):
        return None
    if arr.shape[1:] == (g, g) and (g, g) != frame_hw:
        rows = np.minimum((np.arange(frame_hw[0]) * g) // frame_hw[0], g - 1)
        cols = np.minimum((np.arange(frame_hw[1]) * g) // frame_hw[1], g - 1)
        arr = arr[:, rows][:, :, cols]
    return arr


def _weak_labels(runs: Sequence[RunView], rows: Sequence[dict[str, Any]], sample_id: str,
                 frame_hw: tuple[int, int]) -> np.ndarray | None:
    """The first weak labels found in the runs' ``weak_labels/`` folders or prediction rows."""
    safe = sample_id.replace("/", "_")
    for run, row in zip(runs, rows):
        folder = run.run_dir / "weak_labels"
        candidates: list[Any] = [folder / f"{name}.npy" for name in dict.fromkeys((sample_id, safe))]
        candidates.append(row.get("weak_labels"))
        for item in candidates:
            if isinstance(item, Path):
                if not item.is_file():
                    continue
                try:
                    item = np.load(item, allow_pickle=False)
                except (OSError, ValueError) as exc:
                    log.warning("ignoring unreadable weak labels %s: %s", item, exc)
                    continue
            if item is None:
                continue
            try:
                segments = weak_label_segments(item, int(run.geometry["grid_size"]), frame_hw)
            except (TypeError, ValueError):
                segments = None
            if segments is not None:
                return segments
            log.warning("ignoring weak labels of %s in %s: unknown layout", sample_id, run.run_dir)
    return None


def _verdict(sample: Sample, prediction: str) -> str:
    """The caption colour of a prediction: credited (green) or not (red) by the rule scoring uses.

    Closed: ``llava_med``'s closed rule; multiple choice: ``mc@difflib`` over the sample's options
    (:func:`medbench.metrics.mc.mc_hit`); open: the GT as a normalised substring.
    """
    from medbench.metrics.mc import mc_hit
    from medbench.metrics.vqa import closed_hit, substring_hit

    if sample.answer_type == AnswerType.REPORT:
        return "black"
    if sample.answer_type == AnswerType.MC:
        options = sample.meta.get("options")
        if not options:
            raise ShowError(f"sample {sample.id!r} is multiple choice but has no options to score it against")
        hit = mc_hit(prediction, sample.answer, options)
    else:
        rule = closed_hit if sample.answer_type == AnswerType.CLOSED else substring_hit
        hit = bool(rule(prediction, sample.answer))
    return "tab:green" if hit else "tab:red"


def _task_scores(task: Any, sample: Sample, prediction: str) -> str:
    """`` [finding_f1 x.xx]`` for each per-sample metric the task declares (phantom reports), else empty."""
    if not prediction.strip():
        return ""
    row = {"id": sample.id, "answer": sample.answer, "prediction": prediction}
    parts = []
    for factory in task.metric_families().values():
        for name, result in factory(0).compute([row]).items():
            if result.value is not None:
                parts.append(f" [{name} {result.value:.2f}]")
    return "".join(parts)


def _caption(sample: Sample, titles: list[str], rows: list[dict[str, Any]], width: int,
             task: Any = None) -> list[tuple[str, str]]:
    """Wrapped caption lines with their colours."""
    entries = [(f"Q: {sample.question}", "black"), (f"A: {sample.answer}", "black")]
    for title, row in zip(titles, rows):
        prediction = str(row.get("prediction") or "")
        text = f"{title}: {prediction or '(empty)'}{_task_scores(task, sample, prediction) if task else ''}"
        entries.append((text, _verdict(sample, prediction)))
    lines: list[tuple[str, str]] = []
    for text, colour in entries:
        wrapped = textwrap.wrap(" ".join(text.split()), width=width, max_lines=6, placeholder=" …") or [text]
        lines.extend((line, colour) for line in wrapped)
    return lines


def _titles(runs: Sequence[RunView]) -> list[str]:
    """Run titles, made unique with the model and run-folder names where needed."""
    titles = [run_label(r.tuning, r.decoding) for r in runs]
    for i, run in enumerate(runs):
        if titles.count(run_label(run.tuning, run.decoding)) > 1:
            titles[i] = f"{titles[i]} ({Path(str(run.config.get('model', ''))).name}/{run.run_dir.name})"
    return titles


def _draw_roi(ax: Any, mask: np.ndarray | None, **style: Any) -> None:
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(np.float64), levels=[0.5], **style)


def _draw_weak(ax: Any, frame: np.ndarray, segments: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(frame)
    if not len(segments):
        ax.text(0.5, 0.5, "no segments", color="white", ha="center", va="center", transform=ax.transAxes)
        return
    union = np.clip(segments.max(axis=0), 0.0, 1.0)
    overlay = np.zeros((*union.shape, 4))
    overlay[..., 1] = 1.0
    overlay[..., 3] = 0.45 * (union > 0) * np.maximum(union, 0.5)
    ax.imshow(overlay)
    for seg in segments:
        ys, xs = np.nonzero(seg > 0)
        if ys.size:
            ax.add_patch(Rectangle((xs.min() - 0.5, ys.min() - 0.5), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1, fill=False, edgecolor="red", linewidth=1.2))


def _render(path: Path, head: list[tuple[str, np.ndarray, np.ndarray | None]], weak: np.ndarray | None,
            maps: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]],
            scores: list[dict[str, float]], caption: list[tuple[str, str]], dpi: int) -> None:
    """Draw the panels (image + RoI, weak labels, one heatmap per run) and the caption to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medbench.metrics.attention import minmax_normalize, upsample_bilinear

    ncols = len(head) + len(maps)
    line_in, title_in = 0.19, 0.7
    height = PANEL_IN + title_in + line_in * len(caption) + 0.15
    fig = Figure(figsize=(ncols * PANEL_IN, height), dpi=dpi)
    FigureCanvasAgg(fig)
    bottom = (line_in * len(caption) + 0.15) / height
    axes = [fig.add_axes((i / ncols + 0.01, bottom, 1 / ncols - 0.02, PANEL_IN / height)) for i in range(ncols)]
    for i, (title, frame, roi) in enumerate(head):
        ax = axes[i]
        ax.set_title(title, fontsize=9)
        if weak is not None and i == 1:
            _draw_weak(ax, frame, weak)
        else:
            ax.imshow(frame)
            _draw_roi(ax, roi, colors="red", linewidths=1.6)
    for ax, (title, frame, roi, grid), sample in zip(axes[len(head):], maps, scores):
        ax.imshow(frame)
        ax.imshow(upsample_bilinear(minmax_normalize(grid)[0], frame.shape[:2]), cmap="jet", alpha=0.5,
                  vmin=0.0, vmax=1.0)
        _draw_roi(ax, roi, colors="white", linewidths=0.8, linestyles="dashed")
        ax.set_title(title + _score_title(sample), fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    for i, (text, colour) in enumerate(caption):
        fig.text(0.01, (line_in * (len(caption) - i) - 0.02) / height, text, color=colour, fontsize=9, va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def show(run_dirs: Sequence[str | Path], sample_id: str, output: str | Path | None = None, *,
         task: Any = None, dpi: int = 100) -> ShowResult:
    """Write the figure of ``sample_id`` across ``run_dirs`` (default ``<first run>/show/<id>.png``).

    ``task`` (an instance) overrides the task re-created from the first run's ``run.json``.
    """
    from medbench.geometry import input_size

    if not run_dirs:
        raise ShowError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    names = {r.config.get("task") for r in runs}
    if len(names) != 1:
        raise ShowError(f"the runs are of different tasks ({', '.join(sorted(map(str, names)))})")
    if task is None:
        from medbench.registry import open_task

        run_info = json.loads((runs[0].run_dir / "run.json").read_text(encoding="utf-8"))
        task = open_task(runs[0].config["task"], runs[0].config.get("data_root"), run_info.get("task_version"),
                         image_root=runs[0].config.get("image_root"))
    sample = _find_sample(task, sample_id, runs[0].config.get("limit"), runs[0].config.get("split"))
    rows = [_row(r, sample_id) for r in runs]
    frames: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for run in runs:
        key = json.dumps(run.geometry, sort_keys=True)
        if key not in frames:
            frames[key] = (frame_image(sample, run.geometry), _roi_mask(sample, run.geometry))
    frame, roi = frames[json.dumps(runs[0].geometry, sort_keys=True)]
    roi_label = f" ({sample.roi.label})" if sample.roi is not None and sample.roi.label else ""
    head = [(f"input + GT RoI{roi_label}" if roi is not None else "input (no RoI)", frame, roi)]
    weak = _weak_labels(runs, rows, sample_id, input_size(runs[0].geometry))
    if weak is not None:
        head.append((f"weak labels ({len(weak)})", frame, None))
    titles = _titles(runs)
    maps = [(t, *frames[json.dumps(r.geometry, sort_keys=True)], _attention(row))
            for t, r, row in zip(titles, runs, rows)]
    ncols = len(head) + len(maps)
    caption = _caption(sample, titles, rows, int(ncols * PANEL_IN * 72 / (9 * 0.6)), task)
    path = Path(output) if output else runs[0].run_dir / "show" / f"{sample_id.replace('/', '_')}.png"
    scores = [sample_scores(grid, roi) for _, _, roi, grid in maps]
    _render(path, head, weak, maps, scores, caption, dpi)
    with Image.open(path) as im:
        size = im.size
    return ShowResult(path, sample_id, size, [h[0] for h in head] + titles, dict(zip(titles, scores)))
