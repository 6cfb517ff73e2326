"""``medbench data check``: validate a local dataset copy and count what a run would see.

:func:`check_task` loads every split of a task, opens every referenced image, and returns
``{"task", "data_root", "image_root", "splits": {split: {"rows", "n", "unscorable", "open", "closed", "mc",
"report"}}, "skipped": [{"id", "reason"}], "image_modes", "count_checks", "provenance"}``. ``rows`` counts
the records of the split as published (or as drawn, for a derived split), ``unscorable`` those without
a gold answer (they stay in the split but are never loaded; the rule is
``medbench.tasks._common.UNSCORABLE_RULE``). ``n`` counts scorable, usable samples: loader skips, images
that fail to open (``image-unreadable``) and images that cannot be turned into an 8-bit model input
(``image-unconvertible``: a constant or non-finite 16-bit/float image, an unknown pixel mode; see
:mod:`medbench.images`) are left out of it and listed under ``skipped``. ``image_modes`` counts the
stored pixel modes of the distinct images opened. A wrong layout raises
:class:`~medbench.task.DataRootError` naming the expected layout.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from typing import Any

from medbench.types import AnswerType, Sample

log = logging.getLogger("medbench")


def _open_image(path: str) -> tuple[str | None, str | None]:
    """``(mode, None)`` for an image a run can use, else ``(None, "<skip reason>: <detail>")``."""
    from medbench.images import ImageModeError, probe_image

    try:
        return probe_image(path), None
    except ImageModeError as exc:
        log.warning("image %s cannot be used: %s", path, exc)
        return None, f"image-unconvertible: {exc}"
    except Exception as exc:
        return None, f"image-unreadable: {type(exc).__name__}: {exc}"


def make_task(name: str, data_root: str | None, **options: Any) -> Any:
    """Instantiate task ``name``, passing only the options its constructor accepts.

    ``image_root`` is the exception: a task that reads its images from its data root refuses it
    (a :class:`~medbench.task.DataRootError`) rather than ignoring it.
    """
    from medbench.registry import TASKS
    from medbench.task import DataRootError

    cls = TASKS.get(name)
    params = inspect.signature(cls.__init__).parameters
    if options.get("image_root") is not None and "image_root" not in params:
        raise DataRootError(f"{name} reads its images from its data root; --image-root is for tasks whose images "
                            "live in another folder (iu-xray-vqa, omnimedvqa, mimic-cxr-report)")
    return cls(data_root=data_root, **{k: v for k, v in options.items() if k in params})


def roi_visibility(samples: list[Sample], geometry: dict[str, Any],
                   rules: tuple[str, ...] = ("area50_max", "area50")) -> dict[str, Any]:
    """Share of the samples' RoIs with at least one cell on the ``geometry``'s token grid, per rule."""
    from PIL import Image

    from medbench.geometry import mask_to_grid

    sizes: dict[str, tuple[int, int]] = {}
    visible = Counter()
    n = 0
    for s in samples:
        if s.roi is None:
            continue
        if s.image_path not in sizes:
            with Image.open(s.image_path) as im:
                sizes[s.image_path] = im.size
        mask = s.roi.to_mask(*sizes[s.image_path])
        n += 1
        for rule in rules:
            visible[rule] += bool(mask_to_grid(mask, geometry, rule).any())
    return {"n_roi": n, "grid_size": int(geometry["grid_size"]),
            "visible": {rule: (visible[rule] / n if n else None) for rule in rules}}


def _grid_geometry(task: Any, grid_model: str | None) -> tuple[str, dict[str, Any]] | None:
    if grid_model is None:
        grid_model = "tiny-med-llava" if getattr(task, "embedded", False) else "none"
    if grid_model == "none":
        return None
    from medbench.models import load_backbone

    return grid_model, load_backbone(grid_model, device="cpu").geometry()


def check_task(name: str, data_root: str | None = None, *, open_images: bool = True,
               grid_model: str | None = None, **options: Any) -> dict[str, Any]:
    """Load every split of ``name`` from ``data_root`` and report counts and skips (see module doc)."""
    task = make_task(name, data_root, **options)
    grid = _grid_geometry(task, grid_model)
    visibility: dict[str, Any] = {}
    splits: dict[str, dict[str, int]] = {}
    unreadable: list[dict[str, str]] = []
    opened: dict[str, tuple[str | None, str | None]] = {}
    for split in task.splits:
        samples: list[Sample] = task.load(split)
        usable = []
        for s in samples:
            if open_images:
                if s.image_path not in opened:
                    opened[s.image_path] = _open_image(s.image_path)
                reason = opened[s.image_path][1]
                if reason is not None:
                    unreadable.append({"id": s.id, "reason": reason})
                    continue
            usable.append(s)
        kinds = Counter(s.answer_type for s in usable)
        chk = getattr(task, "count_checks", {}).get(split, {})
        splits[split] = {"rows": chk.get("rows", len(samples)), "n": len(usable),
                         "unscorable": chk.get("unscorable", 0), "open": kinds[AnswerType.OPEN],
                         "closed": kinds[AnswerType.CLOSED], "mc": kinds[AnswerType.MC],
                         "report": kinds[AnswerType.REPORT]}
        if grid is not None and any(s.roi is not None for s in usable):
            visibility[split] = {"model": grid[0], **roi_visibility(usable, grid[1])}
    skipped = [{"id": s.id, "reason": s.reason} for s in task.skipped] + unreadable
    return {
        "task": task.name,
        "data_root": None if task.data_root is None else str(task.data_root),
        "image_root": None if getattr(task, "image_root", None) is None else str(task.image_root),
        "splits": splits,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason"].split(":", 1)[0] for s in skipped)),
        "image_modes": dict(sorted(Counter(mode for mode, _ in opened.values() if mode is not None).items())),
        "count_checks": getattr(task, "count_checks", {}),
        "provenance": getattr(task, "provenance", {}),
        "roi_visibility": visibility,
    }


def render_text(result: dict[str, Any], max_listed: int = 100) -> str:
    """A human-readable summary of :func:`check_task`'s result."""
    from tabulate import tabulate

    image_root = result.get("image_root")
    lines = [f"task {result['task']}  (data root: {result['data_root']}"
             + (f"; image root: {image_root})" if image_root else ")"), ""]
    checks = result.get("count_checks", {})
    rows = []
    for split, c in result["splits"].items():
        chk = checks.get(split, {})
        table6 = chk.get("table6")
        note = "" if table6 is None else ("derived split" if chk.get("derived") else
                                          "ok" if chk.get("match") else "DIFFERS")
        rows.append([split, c.get("rows", c["n"]), c["n"], c["open"], c["closed"], c.get("mc", 0), c["report"],
                     table6 if table6 is not None else "", note])
    lines.append(tabulate(rows, headers=["split", "rows", "scorable", "open", "closed", "mc", "report", "Table 6",
                                         "check"]))
    if any(c.get("unscorable") for c in result["splits"].values()):
        lines.append("unscorable rows (no gold answer; kept in the split, never scored): "
                     + ", ".join(f"{split} {c['unscorable']}" for split, c in result["splits"].items()))
    modes = result.get("image_modes") or {}
    if modes:
        from medbench.images import HIGH_DEPTH_MODES, RESCALE_RULE

        lines += ["", "image modes: " + ", ".join(f"{mode} {n}" for mode, n in modes.items())
                  + (f" ({RESCALE_RULE})" if HIGH_DEPTH_MODES & set(modes) else "")]
    prov = result.get("provenance") or {}
    if prov:
        lines += ["", "provenance: " + ", ".join(f"{k}={v}" for k, v in sorted(prov.items()) if k != "keys")]
    visibility = result.get("roi_visibility") or {}
    if visibility:
        first = next(iter(visibility.values()))
        g = first["grid_size"]
        lines += ["", f"RoIs visible on {first['model']}'s {g}x{g} token grid (at least one cell):"]
        rules = list(first["visible"])
        lines.append(tabulate([[split, v["n_roi"], *(f"{100 * v['visible'][r]:.1f} %" for r in rules)]
                               for split, v in visibility.items()], headers=["split", "RoIs", *rules]))
    skipped = result["skipped"]
    lines += ["", f"skipped records: {len(skipped)}"]
    for reason, n in sorted(result.get("skipped_by_reason", {}).items()):
        lines.append(f"  {reason}: {n}")
    for s in skipped[:max_listed]:
        lines.append(f"  {s['id']}: {s['reason']}")
    if len(skipped) > max_listed:
        lines.append(f"  ... and {len(skipped) - max_listed} more (--json lists them all)")
    return "\n".join(lines)
