"""Shared machinery of the real-dataset tasks.

- :class:`RealTask`: root checks with an error that names the expected layout, images resolved
  inside the data root (escapes are counted skips), per-split caching, duplicate-id guard, and the
  Table 6 count check (a logged warning recorded in ``count_checks``, never a crash).
- :func:`grouped_split` and the manifest helpers: derived splits ``sha256-group-v1`` (spec §2.9).
- Readers that name the file, the record and the field of malformed input.
- The rule for unscorable rows (:data:`UNSCORABLE_RULE`), shared by every loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from medbench.task import DataRootError, Task
from medbench.types import Sample

log = logging.getLogger("medbench.tasks")

PHANTOM_HINT = "For a weight-free, data-free run use `--task phantom-vqa` (or `--task phantom-report`)."
MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
SPLIT_ALGORITHM = "sha256-group-v1"
IMAGE_PLACEHOLDER = re.compile(r"\s*<image>\s*")

#: Skip reasons that mean "this row has no gold answer" (as opposed to an unusable row: a missing
#: image, a malformed record, a duplicate id, ...).
UNSCORABLE_REASONS = ("empty-answer", "hedged-answer", "mc-no-gold", "short-target", "report-missing",
                      "report-hand-sectioned")
UNSCORABLE_RULE = (
    "A row without a gold answer (an empty answer, a CARES answer without yes/no, an MC answer that maps "
    "to no single option, a missing report or a report target under the length limit) stays in its split: "
    "it counts among the split's rows and in derived-split draws, but it is never loaded as a sample, so it "
    "is never decoded, scored or trained on; it is listed under `skipped` with its reason."
)


def is_unscorable(reason: str) -> bool:
    """Whether a skip reason is one of :data:`UNSCORABLE_REASONS` (no gold answer)."""
    return reason.split(":", 1)[0] in UNSCORABLE_REASONS


class MalformedDataError(DataRootError):
    """A data file that does not follow its published format; names the file, record and field."""


class RecordError(ValueError):
    """One record with a missing or wrongly typed field."""

    def __init__(self, file: str | os.PathLike, record: Any, field: str, problem: str):
        self.file, self.record, self.field = str(file), record, field
        super().__init__(f"{file} record {record} field {field!r}: {problem}")


class UnsafePathError(ValueError):
    """A path from a record that is absolute or escapes the data root."""


# ---- reading ---------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise MalformedDataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise MalformedDataError(f"{path}: not UTF-8 text ({exc})") from None
    except RecursionError:
        raise MalformedDataError(f"{path}: JSON nested too deeply") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(0-based line number, parsed object or RecordError)`` for every non-blank line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, RecordError(path, f"line {lineno}", "<json>", f"not valid JSON ({exc.msg})")


def get_field(rec: Any, key: str, types: type | tuple[type, ...], file: Path | str, where: Any,
              *, required: bool = True, default: Any = None) -> Any:
    """``rec[key]`` checked against ``types``; raises :class:`RecordError` naming file, record, field."""
    if not isinstance(rec, dict):
        raise RecordError(file, where, "<record>", f"expected a JSON object, got {type(rec).__name__}")
    if key not in rec or rec[key] is None:
        if required:
            raise RecordError(file, where, key, "missing")
        return default
    value = rec[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise RecordError(file, where, key, f"expected {_type_names(types)}, got bool")
    if not isinstance(value, types):
        raise RecordError(file, where, key, f"expected {_type_names(types)}, got {type(value).__name__}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def strip_image_placeholder(text: str) -> str:
    """Drop ``<image>`` placeholders (and the whitespace around them) from a question."""
    return IMAGE_PLACEHOLDER.sub(" ", text).strip()


def yes_no_gold(answer: str) -> str | None:
    """The first whole-word ``yes``/``no`` of the lower-cased answer, else ``None`` (spec §2.5)."""
    m = re.search(r"\b(yes|no)\b", answer.lower())
    return m.group(1) if m else None


def safe_join(root: Path, rel: Any) -> Path:
    """``root/rel``, refusing absolute paths, NUL bytes and ``..`` escapes (checked lexically)."""
    if not isinstance(rel, str) or not rel.strip():
        raise UnsafePathError(f"not a relative path: {rel!r}")
    if "\x00" in rel or os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise UnsafePathError(f"absolute or invalid path {rel!r}")
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, rel))
    if os.path.commonpath([base, full]) != base:
        raise UnsafePathError(f"path {rel!r} escapes the data root")
    return Path(full)


# ---- derived splits (spec §2.9) ----------------------------------------------------------------


def group_order_key(dataset_id: str, seed: int, group: str) -> str:
    """``sha256(f"{dataset_id}:{seed}:{group}")``: the walk order, independent of any RNG."""
    return hashlib.sha256(f"{dataset_id}:{seed}:{group}".encode()).hexdigest()


def check_hash(image: str, question: str) -> str:
    """``sha1(image + "\\t" + question)[:12]``: the per-id content check kept in manifests."""
    return hashlib.sha1(f"{image}\t{question}".encode()).hexdigest()[:12]


def grouped_split(rows: Iterable[tuple[str, str, str]], dataset_id: str, seed: int = 0,
                  test_fraction: float = 0.30) -> dict[str, str]:
    """``{row id: "train"|"test"}`` from ``(id, group, stratum)`` rows.

    Per stratum, groups are walked in :func:`group_order_key` order and go to test while the
    stratum's test rows are below ``round(test_fraction * rows in stratum)``; the rest go to train.
    A group lives in the stratum of its first row, so no group is ever in both splits.
    """
    group_stratum: dict[str, str] = {}
    members: dict[str, list[str]] = defaultdict(list)
    for rid, group, stratum in rows:
        group_stratum.setdefault(group, stratum)
        members[group].append(rid)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for group, stratum in group_stratum.items():
        by_stratum[stratum].append(group)
    out: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        groups = sorted(by_stratum[stratum], key=lambda g: group_order_key(dataset_id, seed, g))
        target = round(test_fraction * sum(len(members[g]) for g in groups))
        n_test = 0
        for group in groups:
            split = "test" if n_test < target else "train"
            n_test += len(members[group]) if split == "test" else 0
            for rid in members[group]:
                out[rid] = split
    return out


def manifest_path(dataset_id: str, split_version: str, directory: Path | None = None) -> Path:
    return (directory or MANIFEST_DIR) / f"{dataset_id}.{split_version}.json"


def source_entry(root: Path, path: Path) -> dict[str, Any]:
    from medbench.hashing import sha256_file

    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return {"relpath": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical serialisation: sorted keys, so runs on the same source are byte-identical."""
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def read_manifest(path: Path) -> dict[str, Any]:
    data = read_json(path)
    for key in ("dataset_id", "split_version", "algorithm", "source_files", "ids", "checks", "counts"):
        if not isinstance(data, dict) or key not in data:
            raise MalformedDataError(f"{path}: split manifest lacks the field {key!r}")
    return data


@dataclass(frozen=True)
class Row:
    """One record of a derived-split dataset before its split is known.

    ``sample`` has an empty split and the image path relative to ``image_base``; ``skip`` is the
    reason it will be skipped (the row still counts when the split is drawn).
    """

    id: str
    group: str
    stratum: str
    check: str
    sample: Sample | None
    image_base: Path | None
    skip: str | None = None


# ---- the task base ---------------------------------------------------------------------------


class RealTask(Task):
    """A task reading a published dataset from a local root (see the module docstring)."""

    section: ClassVar[str] = ""
    table6: ClassVar[dict[str, int]] = {}
    derived: ClassVar[bool] = False

    def __init__(self, data_root: str | os.PathLike | None = None, *, strict: bool = False):
        """``strict`` turns malformed records into errors instead of counted skips."""
        super().__init__(data_root)
        self.strict = strict
        self.count_checks: dict[str, dict[str, Any]] = {}
        self.provenance: dict[str, Any] = {}
        self._loaded: dict[str, list[Sample]] = {}
        self._outside_split = 0  # skips recorded during a split's load that belong to no split

    # -- roots and errors

    def layout_error(self, problem: str) -> DataRootError:
        return DataRootError(
            f"{self.name}: {problem}.\nExpected layout (dataset spec {self.section}):\n{self.expected_layout}\n"
            f"Pass --data-root DIR or set MEDBENCH_DATA so that $MEDBENCH_DATA/{self.name} is DIR. {PHANTOM_HINT}"
        )

    def root(self) -> Path:
        if self.data_root is None:
            raise self.layout_error("no data root given")
        if not self.data_root.is_dir():
            raise self.layout_error(f"data root {self.data_root} does not exist or is not a directory")
        return self.data_root

    def find_dir(self, *candidates: str, marker: str) -> Path:
        """The first of ``root/candidate`` that contains ``marker``; logs which was used."""
        root = self.root()
        for cand in candidates:
            base = root / cand if cand else root
            if (base / marker).exists():
                if cand:
                    log.debug("%s: using %s", self.name, base)
                return base
        tried = ", ".join(str((root / c if c else root) / marker) for c in candidates)
        raise self.layout_error(f"{marker} not found (looked for {tried})")

    def require(self, path: Path) -> Path:
        if not path.exists():
            raise self.layout_error(f"missing {path}")
        return path

    # -- record helpers

    def bad_record(self, rid: str, exc: RecordError) -> None:
        if self.strict:
            raise MalformedDataError(str(exc)) from exc
        self.skip(rid, f"malformed: {exc}")

    def image_path(self, rid: str, base: Path, rel: Any) -> Path | None:
        """The image inside ``base``, or ``None`` after recording a skip (unsafe or missing)."""
        try:
            path = safe_join(base, rel)
        except UnsafePathError as exc:
            self.skip(rid, f"unsafe-path: {exc}")
            return None
        try:
            found = path.is_file()
        except OSError as exc:  # e.g. a name longer than the filesystem allows
            self.skip(rid, f"unsafe-path: {rel[:80]!r}: {exc.strerror}")
            return None
        if not found:
            self.skip(rid, f"image-missing: {rel}")
            return None
        return path

    # -- loading

    def load(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits {self.splits}, not {split!r}")
        if split not in self._loaded:
            before, outside = len(self.skipped), self._outside_split
            seen: set[str] = set()
            samples = []
            for s in self._load(split):
                if s.id in seen:
                    self.skip(s.id, "duplicate-id")
                    continue
                seen.add(s.id)
                samples.append(s)
            samples.sort(key=lambda s: s.id)
            mine = self.skipped[before:]
            n_outside = self._outside_split - outside
            unscorable = sum(1 for s in mine if is_unscorable(s.reason))
            self._record_count(split, len(samples), len(mine) - n_outside, unscorable)
            self._loaded[split] = samples
        return list(self._loaded[split])

    @abstractmethod
    def _load(self, split: str) -> Iterable[Sample]:
        """Every sample of ``split`` (order free; :meth:`load` sorts and caches them)."""

    def _record_count(self, split: str, n: int, n_skipped: int, n_unscorable: int = 0) -> None:
        """``rows`` = records of the split (loaded + skipped); ``loaded`` = the scorable samples."""
        expected = self.table6.get(split)
        check = {"rows": n + n_skipped, "loaded": n, "skipped": n_skipped, "unscorable": n_unscorable,
                 "table6": expected,
                 "match": None if expected is None else n == expected, "derived": self.derived}
        self.count_checks[split] = check
        if expected is None:
            log.info("%s %s: %d samples (%d skipped)", self.name, split, n, n_skipped)
        elif n != expected and not self.derived:
            log.warning("%s %s: loaded %d samples but Table 6 has %d (%d skipped; see `medbench data check "
                        "--task %s`)", self.name, split, n, expected, n_skipped, self.name)
        else:
            log.info("%s %s: %d samples (Table 6: %d; %d skipped)", self.name, split, n, expected, n_skipped)


class DerivedSplitTask(RealTask):
    """A task whose split is derived (spec §2.9): a committed manifest wins, else the split is computed.

    Subclasses implement :meth:`read_rows` (every record, skipped ones included) and
    :meth:`source_files`; the split is drawn once per instance over all rows.
    """

    derived = True
    dataset_id: ClassVar[str]
    split_version: ClassVar[str] = "v1"
    algorithm: ClassVar[str] = SPLIT_ALGORITHM
    seed: ClassVar[int] = 0
    test_fraction: ClassVar[float] = 0.30

    def __init__(self, data_root: str | os.PathLike | None = None, *, strict: bool = False,
                 allow_source_mismatch: bool = False, manifest_dir: str | os.PathLike | None = None,
                 image_root: str | os.PathLike | None = None):
        """``manifest_dir`` overrides the packaged ``manifests/``; ``allow_source_mismatch`` uses a
        manifest even when the local source files differ from the ones it was built from (logged);
        ``image_root`` is a second root where the images live when they are not under the data root
        (``--image-root``; what it must hold is in each task's ``expected_layout``)."""
        super().__init__(data_root, strict=strict)
        self.image_root = Path(image_root) if image_root is not None else None
        self.allow_source_mismatch = allow_source_mismatch
        self.manifest_dir = Path(manifest_dir) if manifest_dir is not None else None
        self._rows: list[Row] | None = None
        self._assignment: dict[str, str] | None = None

    @abstractmethod
    def read_rows(self) -> list[Row]:
        """Every record of the source, skipped ones included, before the split is drawn."""

    @abstractmethod
    def source_files(self) -> list[Path]:
        """The files the rows come from (hashed into the manifest)."""

    def compute_assignment(self, rows: list[Row]) -> dict[str, str]:
        return grouped_split(((r.id, r.group, r.stratum) for r in rows), self.dataset_id, self.seed,
                             self.test_fraction)

    def rows(self) -> list[Row]:
        if self._rows is None:
            self._rows = self.read_rows()
        return self._rows

    def assignment(self) -> dict[str, str]:
        if self._assignment is None:
            self._assignment = self._resolve_assignment(self.rows())
        return self._assignment

    def _resolve_assignment(self, rows: list[Row]) -> dict[str, str]:
        path = manifest_path(self.dataset_id, self.split_version, self.manifest_dir)
        if not path.exists():
            log.warning("%s: no committed split manifest (%s); using the computed %s split (seed %d)",
                        self.name, path.name, self.algorithm, self.seed)
            self.provenance["split_source"] = "computed"
            return self.compute_assignment(rows)
        manifest = read_manifest(path)
        self.provenance["split_source"] = f"manifest {path.name}"
        root = self.root()
        local = {e["relpath"]: e for e in (source_entry(root, p) for p in self.source_files())}
        for entry in manifest["source_files"]:
            mine = local.get(entry["relpath"])
            if mine is None or mine["sha256"] != entry["sha256"]:
                found = "missing" if mine is None else f"sha256 {mine['sha256'][:12]}…"
                message = (f"{self.name}: source file {entry['relpath']} differs from the one split manifest "
                           f"{path} was built from (expected sha256 {entry['sha256'][:12]}…, found {found})")
                if not self.allow_source_mismatch:
                    raise MalformedDataError(message + "; use the published file, regenerate the manifest with "
                                             "`medbench data manifest`, or pass --allow-source-mismatch")
                log.warning("%s (allowed by --allow-source-mismatch)", message)
                self.provenance["source_mismatch_allowed"] = True
        out = {rid: split for split, ids in manifest["ids"].items() for rid in ids}
        checks = manifest["checks"]
        for row in rows:
            if row.id in checks and checks[row.id] != row.check:
                out[row.id] = "mismatch"
        return out

    def _load(self, split: str) -> Iterable[Sample]:
        assignment = self.assignment()
        for row in self.rows():
            where = assignment.get(row.id)
            if where == split:
                if row.skip is not None:
                    self.skip(row.id, row.skip)
                    continue
                yield from self._materialise(row, split)
        if split == self.eval_split:
            for row in self.rows():
                if assignment.get(row.id) is None:
                    self.skip(row.id, "not-in-manifest")
                    self._outside_split += 1
                elif assignment[row.id] == "mismatch":
                    self.skip(row.id, "manifest-check-mismatch: image or question differs from the manifest")
                    self._outside_split += 1

    def _materialise(self, row: Row, split: str) -> Iterator[Sample]:
        assert row.sample is not None and row.image_base is not None
        path = self.image_path(row.id, row.image_base, row.sample.image_path)
        if path is not None:
            yield replace(row.sample, image_path=str(path), split=split)

    def build_manifest(self) -> dict[str, Any]:
        """The manifest of the locally computed split (never of a committed one)."""
        import medbench

        rows = self.rows()
        assignment = self.compute_assignment(rows)
        ids = {s: sorted(r.id for r in rows if assignment.get(r.id) == s) for s in ("train", "test")}
        root = self.root()
        return {
            "dataset_id": self.dataset_id, "split_version": self.split_version, "algorithm": self.algorithm,
            "seed": self.seed, "test_fraction": self.test_fraction,
            "source_files": [source_entry(root, p) for p in self.source_files()],
            "n_rows": len(rows), "n_groups": len({r.group for r in rows}),
            "counts": {s: len(v) for s, v in ids.items()},
            "counts_scorable": {s: sum(1 for r in rows if assignment.get(r.id) == s and r.skip is None)
                                for s in ("train", "test")},
            "table6": dict(self.table6), "medbench_version": medbench.__version__,
            "ids": ids, "checks": {r.id: r.check for r in sorted(rows, key=lambda r: r.id)},
        }

    def write_manifest(self, directory: str | os.PathLike | None = None) -> Path:
        """Write :meth:`build_manifest` to ``directory`` (default: the packaged ``manifests/``)."""
        from medbench.atomic import atomic_write_bytes

        path = manifest_path(self.dataset_id, self.split_version, Path(directory) if directory else None)
        atomic_write_bytes(path, manifest_bytes(self.build_manifest()))
        return path


class CaresTask(DerivedSplitTask):
    """A CARES JSONL task (IU-Xray VQA, OmniMedVQA) whose images live in a separate folder.

    Subclasses set ``cares_name`` (the JSONL file) and ``cares_dirs`` (where it may sit under
    the data root) and implement :meth:`images_dir`.
    """

    cares_name: ClassVar[str] = ""
    cares_dirs: ClassVar[tuple[str, ...]] = ("",)

    def cares_file(self) -> Path:
        return self.find_dir(*self.cares_dirs, marker=self.cares_name) / self.cares_name

    def checked_image_root(self) -> Path:
        """The ``image_root`` given, which must be a directory (a layout error otherwise)."""
        assert self.image_root is not None
        if not self.image_root.is_dir():
            raise self.layout_error(f"image root {self.image_root} does not exist or is not a directory")
        self.provenance["image_root"] = str(self.image_root)
        return self.image_root
