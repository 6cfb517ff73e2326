"""PathVQA: the original pickle release (official splits) or the parquet mirror (spec §2.4, §3).

Pickle layout (``source_format="pickle"``): ``DIR/qas/{train,val,test}_vqa.pkl`` and
``DIR/images/{train,val,test}/<img_id>.jpg`` (``DIR`` is ``pvqa/`` or a folder containing it). Each
pickle is a list of ``{"answer_type", "img_id", "label": {answer: 1}, "question_id",
"question_type", "sent"}``, read only through :func:`safe_pickle_load`, a restricted unpickler
(spec §3): ``find_class`` admits only ``set``/``frozenset``, persistent ids are refused, strings
are decoded as UTF-8, the result may hold only plain containers and scalars, and files over
512 MiB are refused. The answer is the single key of ``label`` (other records: skip
``pvqa-label``); ids are ``pvqa-<question_id>``; ``"yes/no"`` → CLOSED, ``"other"`` → OPEN.
``qas/<split>/<split>_qa.pkl``, when present, is a row count cross-check.

Parquet layout (``source_format="parquet"``, needs ``pyarrow``): ``DIR/data/{train,validation,
test}-*.parquet`` with columns ``image`` (``{bytes, path}``), ``question``, ``answer``. The mirror
is deduplicated and lower-cased, so it is labelled ``pathvqa-parquet``, its task version is
``<version>+parquet`` and it is never compared with Table 6; CLOSED iff the answer is yes or no.
Images are extracted once into ``$MEDBENCH_CACHE/pathvqa-parquet/images/<sha256>.<ext>``.

``source_format="auto"`` (default) prefers the pickles when both are present and logs which one
was loaded; the choice is kept in ``self.source_format``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medbench.task import DataRootError
from medbench.tasks._common import (
    MalformedDataError,
    RealTask,
    RecordError,
    get_field,
    safe_join,
)
from medbench.types import AnswerType, Sample

log = logging.getLogger("medbench.tasks")

PARQUET_SPLITS = {"train": "train", "val": "validation", "test": "test"}
ANSWER_TYPES = {"yes/no": AnswerType.CLOSED, "other": AnswerType.OPEN}


class UnsafePickleError(MalformedDataError, pickle.UnpicklingError):
    """A pickle that needs anything beyond plain containers and scalars."""


# ---- restricted unpickler (spec §3) -------------------------------------------------------------

PICKLE_RULE = "PathVQA pickles may contain only dict/list/tuple/set/str/bytes/int/float/bool/None"
MAX_PICKLE_BYTES = 512 * 1024 * 1024
_PLAIN = (dict, list, tuple, set, frozenset, str, bytes, int, float, bool, type(None))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, path: Path):
        super().__init__(fh, encoding="utf-8")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
            return set if name == "set" else frozenset
        raise UnsafePickleError(f"{self._path}: refused global {module}.{name}: {PICKLE_RULE}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._path}: refused a persistent id: {PICKLE_RULE}")


def safe_pickle_load(path: str | os.PathLike) -> Any:
    """Load a pickle holding only plain containers and scalars; anything else is refused."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{path}: {size} bytes is over the 512 MiB limit for pickles")
    with open(path, "rb") as fh:
        try:
            obj = _RestrictedUnpickler(fh, path).load()
        except UnsafePickleError:
            raise
        except UnicodeDecodeError as exc:
            raise UnsafePickleError(f"{path}: a string is not UTF-8 ({exc}); no other encoding is tried") from None
        except Exception as exc:
            raise MalformedDataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    _check_plain(obj, path)
    return obj


def _check_plain(obj: Any, path: Path) -> None:
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if type(item) not in _PLAIN:
            raise UnsafePickleError(f"{path}: found a {type(item).__name__}: {PICKLE_RULE}")
        if isinstance(item, (dict, list, tuple, set, frozenset)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, dict):
                for key in item:
                    if type(key) not in (str, int):
                        raise UnsafePickleError(f"{path}: dict key of type {type(key).__name__}; keys must be str or int")
                stack.extend(item.values())
            else:
                stack.extend(item)


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataRootError(
            "pathvqa: reading the parquet release needs the Python package `pyarrow`, which is not installed "
            "(pip install pyarrow), or use the original pickle release (DIR/qas/<split>_vqa.pkl)"
        ) from None
    return pq


class PathVQA(RealTask):
    """PathVQA pathology VQA (Table 6: 19,755 train / 6,761 test, pickle release)."""

    name = "pathvqa"
    label = "PathVQA"
    kind = "vqa"
    version = "1"
    metric_protocol = "llava_med"
    splits = ("train", "val", "test")
    section = "§2.4"
    table6 = {"train": 19755, "test": 6761}
    expected_layout = (
        "pickle release: DIR/qas/{train,val,test}_vqa.pkl and DIR/images/{train,val,test}/<img_id>.jpg\n"
        "(DIR is pvqa/ or a folder that contains pvqa/)\n"
        "or parquet mirror (needs pyarrow): DIR/data/{train,validation,test}-*.parquet"
    )

    def __init__(self, data_root: str | os.PathLike | None = None, *, strict: bool = False,
                 source_format: str = "auto"):
        """``source_format``: ``"auto"``, ``"pickle"`` or ``"parquet"``."""
        super().__init__(data_root, strict=strict)
        if source_format not in ("auto", "pickle", "parquet"):
            raise ValueError("source_format must be 'auto', 'pickle' or 'parquet'")
        self.requested_format = source_format
        self.source_format: str | None = None
        self._base: Path | None = None

    def resolve(self) -> tuple[str, Path]:
        """``(source_format, base directory)``; sets ``source_format``, version and Table 6 use."""
        if self.source_format is not None and self._base is not None:
            return self.source_format, self._base
        root = self.root()
        pickle_base = next((b for b in (root, root / "pvqa") if (b / "qas" / "train_vqa.pkl").is_file()
                            or (b / "qas" / "test_vqa.pkl").is_file()), None)
        parquet_base = next((b for b in (root, root / "path-vqa") if list((b / "data").glob("*.parquet"))), None)
        want = self.requested_format
        if want in ("auto", "pickle") and pickle_base is not None:
            fmt, base = "pickle", pickle_base
        elif want in ("auto", "parquet") and parquet_base is not None:
            fmt, base = "parquet", parquet_base
        else:
            raise self.layout_error(f"no {'pickle or parquet' if want == 'auto' else want} release under {root}")
        if fmt == "parquet":
            self.version = f"{type(self).version}+parquet"
            self.table6 = {}
        self.source_format, self._base = fmt, base
        self.provenance.update(source_format=fmt, dataset_label="pathvqa" if fmt == "pickle" else "pathvqa-parquet")
        log.info("pathvqa: loading the %s release from %s", fmt, base)
        return fmt, base

    def _load(self, split: str) -> Iterable[Sample]:
        fmt, base = self.resolve()
        return self._load_pickle(base, split) if fmt == "pickle" else self._load_parquet(base, split)

    # -- pickle release

    def _load_pickle(self, base: Path, split: str) -> Iterator[Sample]:
        path = self.require(base / "qas" / f"{split}_vqa.pkl")
        self.require(base / "images" / split)
        records = safe_pickle_load(path)
        if not isinstance(records, list):
            raise MalformedDataError(f"{path}: expected a list of question records, got {type(records).__name__}")
        self._cross_check(base, split, len(records))
        for i, rec in enumerate(records):
            rid = f"pvqa-{split}-record{i}"
            try:
                qid = get_field(rec, "question_id", (int, str), path, i)
                rid = f"pvqa-{qid}"
                question = get_field(rec, "sent", str, path, qid)
                img_id = get_field(rec, "img_id", str, path, qid)
                label = get_field(rec, "label", dict, path, qid)
                kind = get_field(rec, "answer_type", str, path, qid)
                if kind not in ANSWER_TYPES:
                    raise RecordError(path, qid, "answer_type", f"expected 'yes/no' or 'other', got {kind!r}")
            except RecordError as exc:
                self.bad_record(rid, exc)
                continue
            if len(label) != 1:
                self.skip(rid, f"pvqa-label: label has {len(label)} keys, expected exactly one")
                continue
            answer = str(next(iter(label)))
            if not answer.strip():
                self.skip(rid, "empty-answer")
                continue
            image = self.image_path(rid, base / "images" / split, f"{img_id}.jpg")
            if image is None:
                continue
            yield Sample(
                id=rid, image_path=str(image), question=question.strip(), answer=answer,
                answer_type=ANSWER_TYPES[kind], split=split,
                meta={"dataset": "pathvqa", "gold": answer, "lang": "en",
                      "question_type": rec.get("question_type"), "source_format": "pickle", "source": rec},
            )

    def _cross_check(self, base: Path, split: str, n: int) -> None:
        qa = base / "qas" / split / f"{split}_qa.pkl"
        if not qa.is_file():
            return
        rows = safe_pickle_load(qa)
        m = len(rows) if isinstance(rows, list) else None
        self.provenance.setdefault("qa_cross_check", {})[split] = {"vqa_rows": n, "qa_rows": m}
        if m != n:
            log.warning("pathvqa %s: %s has %s rows but %s_vqa.pkl has %d", split, qa.name, m, split, n)

    # -- parquet mirror

    def _load_parquet(self, base: Path, split: str) -> Iterator[Sample]:
        pq = _pyarrow_parquet()
        files = sorted((base / "data").glob(f"{PARQUET_SPLITS[split]}-*.parquet"))
        if not files:
            raise self.layout_error(f"no {base / 'data'}/{PARQUET_SPLITS[split]}-*.parquet files")
        from medbench.paths import cache_dir

        image_dir = cache_dir("pathvqa-parquet", "images")
        index = 0
        for path in files:
            try:
                batches = pq.ParquetFile(path).iter_batches(batch_size=256, columns=["image", "question", "answer"])
                for batch in batches:
                    for rec in batch.to_pylist():
                        yield from self._parquet_row(rec, path, split, index, image_dir)
                        index += 1
            except (OSError, ValueError, KeyError) as exc:
                if isinstance(exc, DataRootError):
                    raise
                raise MalformedDataError(f"{path}: not a readable PathVQA parquet file ({exc})") from None

    def _parquet_row(self, rec: dict[str, Any], path: Path, split: str, index: int,
                     image_dir: Path) -> Iterator[Sample]:
        rid = f"pvqa-pq-{split}-{index:06d}"
        try:
            question = get_field(rec, "question", str, path, index)
            answer = get_field(rec, "answer", str, path, index)
            image = get_field(rec, "image", dict, path, index)
            data = get_field(image, "bytes", bytes, path, index)
        except RecordError as exc:
            self.bad_record(rid, exc)
            return
        if not answer.strip():
            self.skip(rid, "empty-answer")
            return
        name = str(image.get("path") or "image.jpg")
        suffix = os.path.splitext(name)[1].lower() or ".jpg"
        target = safe_join(image_dir, hashlib.sha256(data).hexdigest()[:32] + suffix)
        if not target.exists():
            from medbench.atomic import atomic_write_bytes

            atomic_write_bytes(target, data)
        kind = AnswerType.CLOSED if answer.strip().lower() in ("yes", "no") else AnswerType.OPEN
        yield Sample(
            id=rid, image_path=str(target), question=question.strip(), answer=answer, answer_type=kind, split=split,
            meta={"dataset": "pathvqa-parquet", "gold": answer, "lang": "en", "source_format": "parquet",
                  "source": {"question": question, "answer": answer, "image_path": name, "file": path.name}},
        )
