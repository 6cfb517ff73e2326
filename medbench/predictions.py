"""``predictions.jsonl``: the durable, resumable record of a run.

Line 1 is a header ``{"header": true, "fingerprint": ..., "schema_version": ...}``; every other
line is one :class:`medbench.types.Prediction`. Rows are appended and flushed + fsynced per
batch, so a killed run loses at most the batch in flight. On reopen, a torn last line (from a
kill mid-write) is cut off; finished ids are skipped; a different fingerprint is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medbench.schema import SCHEMA_VERSION
from medbench.types import Prediction


class FingerprintMismatch(RuntimeError):
    """The run directory holds predictions of a different configuration."""


class PredictionsFileError(ValueError):
    """A predictions file that cannot be read (names the file and line)."""


def read_rows(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, complete rows); a torn final line is ignored, any other bad line is an error."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete = lines[:-1]  # text after the last newline is a torn write
    header: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionsFileError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise PredictionsFileError(f"{path}:{number}: not UTF-8 text") from None
        except RecursionError:
            raise PredictionsFileError(f"{path}:{number}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise PredictionsFileError(f"{path}:{number}: expected a JSON object")
        if header is None:
            if not obj.get("header"):
                raise PredictionsFileError(f"{path}:1: missing header line")
            header = obj
            continue
        for key in ("id", "prediction"):
            if key not in obj:
                raise PredictionsFileError(f"{path}:{number}: row lacks field {key!r}")
            if not isinstance(obj[key], str):
                raise PredictionsFileError(f"{path}:{number}: field {key!r} is not a string")
        rows.append(obj)
    if header is None:
        raise PredictionsFileError(f"{path}: empty predictions file (no header)")
    return header, rows


class PredictionsWriter:
    """Append-only writer that resumes an existing file of the same fingerprint."""

    def __init__(self, path: str | Path, fingerprint: str, meta: dict[str, Any] | None = None):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._resume()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"header": True, "schema_version": SCHEMA_VERSION, "fingerprint": fingerprint, **(meta or {})}
            with open(self.path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(header, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def _resume(self) -> None:
        raw = self.path.read_bytes()
        cut = raw.rfind(b"\n") + 1
        if cut < len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
        try:
            header, rows = read_rows(self.path)
        except PredictionsFileError:
            if cut == 0:
                self.path.unlink()
                self.__init__(self.path, self.fingerprint)
                return
            raise
        if header.get("fingerprint") != self.fingerprint:
            raise FingerprintMismatch(
                f"{self.path} was written by a different configuration (fingerprint "
                f"{str(header.get('fingerprint'))[:12]} ≠ {self.fingerprint[:12]}); use another --output-dir "
                "or delete that run directory to start over"
            )
        self.done = {r["id"]: r for r in rows if not r.get("error")}

    def append(self, predictions: list[Prediction]) -> None:
        if not predictions:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            for p in predictions:
                fh.write(json.dumps(asdict(p), sort_keys=True, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for p in predictions:
            if p.error is None:
                self.done[p.id] = asdict(p)
