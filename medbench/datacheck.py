"""``medbench data check``: validate a local dataset copy and count what a run would see.

:func:`check_task` loads every split of a task, opens every referenced image, and returns
``{"task", "splits": {split: {"n", "open", "closed", "report"}}, "skipped": [{"id", "reason"}],
"count_checks", "provenance"}``. ``n`` counts usable samples: loader skips and images that fail to
open are left out of it and listed under ``skipped``. A wrong layout raises
:class:`~medbench.task.DataRootError` naming the expected layout.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

from medbench.types import AnswerType, Sample


def _image_error(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def make_task(name: str, data_root: str | None, **options: Any) -> Any:
    """Instantiate task ``name``, passing only the options its constructor accepts."""
    from medbench.registry import TASKS

    cls = TASKS.get(name)
    params = inspect.signature(cls.__init__).parameters
    return cls(data_root=data_root, **{k: v for k, v in options.items() if k in params})


def check_task(name: str, data_root: str | None = None, *, open_images: bool = True,
               **options: Any) -> dict[str, Any]:
    """Load every split of ``name`` from ``data_root`` and report counts and skips (see module doc)."""
    task = make_task(name, data_root, **options)
    splits: dict[str, dict[str, int]] = {}
    unreadable: list[dict[str, str]] = []
    opened: dict[str, str | None] = {}
    for split in task.splits:
        samples: list[Sample] = task.load(split)
        usable = []
        for s in samples:
            if open_images:
                if s.image_path not in opened:
                    opened[s.image_path] = _image_error(s.image_path)
                if opened[s.image_path] is not None:
                    unreadable.append({"id": s.id, "reason": f"image-unreadable: {opened[s.image_path]}"})
                    continue
            usable.append(s)
        kinds = Counter(s.answer_type for s in usable)
        splits[split] = {"n": len(usable), "open": kinds[AnswerType.OPEN], "closed": kinds[AnswerType.CLOSED],
                         "report": kinds[AnswerType.REPORT]}
    skipped = [{"id": s.id, "reason": s.reason} for s in task.skipped] + unreadable
    return {
        "task": task.name,
        "data_root": None if task.data_root is None else str(task.data_root),
        "splits": splits,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason"].split(":", 1)[0] for s in skipped)),
        "count_checks": getattr(task, "count_checks", {}),
        "provenance": getattr(task, "provenance", {}),
    }


def render_text(result: dict[str, Any], max_listed: int = 100) -> str:
    """A human-readable summary of :func:`check_task`'s result."""
    from tabulate import tabulate

    lines = [f"task {result['task']}  (data root: {result['data_root']})", ""]
    checks = result.get("count_checks", {})
    rows = []
    for split, c in result["splits"].items():
        chk = checks.get(split, {})
        table6 = chk.get("table6")
        note = "" if table6 is None else ("derived split" if chk.get("derived") else
                                          "ok" if chk.get("match") else "DIFFERS")
        rows.append([split, c["n"], c["open"], c["closed"], c["report"], table6 if table6 is not None else "", note])
    lines.append(tabulate(rows, headers=["split", "n", "open", "closed", "report", "Table 6", "check"]))
    prov = result.get("provenance") or {}
    if prov:
        lines += ["", "provenance: " + ", ".join(f"{k}={v}" for k, v in sorted(prov.items()) if k != "keys")]
    skipped = result["skipped"]
    lines += ["", f"skipped records: {len(skipped)}"]
    for reason, n in sorted(result.get("skipped_by_reason", {}).items()):
        lines.append(f"  {reason}: {n}")
    for s in skipped[:max_listed]:
        lines.append(f"  {s['id']}: {s['reason']}")
    if len(skipped) > max_listed:
        lines.append(f"  ... and {len(skipped) - max_listed} more (--json lists them all)")
    return "\n".join(lines)
