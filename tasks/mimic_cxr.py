"""MIMIC-CXR-JPG report generation on a derived sample (spec §2.8, §2.9).

Layout (credentialed PhysioNet access; medbench only reads what the user supplies):
``DIR/mimic-cxr-2.0.0-metadata.csv.gz``, ``DIR/mimic-cxr-2.0.0-split.csv.gz`` (``.csv`` also
accepted), images ``DIR/files/p1X/p<subject_id>/s<study_id>/<dicom_id>.jpg`` and the reports as
``DIR/mimic_cxr_sectioned.csv`` (MIT-LCP ``create_section_files.py``; preferred), else
``DIR/mimic-cxr-reports.zip``, else ``DIR/files/p1X/p<subject_id>/s<study_id>.txt``; the latter two
are sectioned by medbench's own ``FINDINGS:``/``IMPRESSION:`` parser
(``section_source="medbench-parser"``).

Derivation: studies of the official train and test splits; one frontal image per study (PA, else
AP, lowest ``dicom_id``; studies without one are filtered); 2,000 train and 500 test studies taken
in ``sha256("mimic-cxr-report:0:<study_id>")`` order; target = findings + " " + impression; targets
under 10 tokens are skipped (``short-target``), as are studies without a report. Ids are
``mimic-s<study_id>``. A manifest in ``manifests/`` overrides the sample.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from medbench.tasks._common import DerivedSplitTask, MalformedDataError, Row, check_hash, group_order_key
from medbench.types import AnswerType, Sample

log = logging.getLogger("medbench.tasks")

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLITS_CSV = "mimic-cxr-2.0.0-split.csv"
SECTIONED = "mimic_cxr_sectioned.csv"
REPORTS_ZIP = "mimic-cxr-reports.zip"
REPORT_INSTRUCTION = "Analyze the chest X-ray and generate a concise medical report."
SAMPLE_SIZES = {"train": 2000, "test": 500}
MIN_TOKENS = 10
_HEADING = re.compile(r"^\s*([A-Z][A-Z /&()-]{2,}):", re.MULTILINE)


def parse_sections(text: str) -> tuple[str, str]:
    """``(findings, impression)`` from a free-text report, by its upper-case ``HEADING:`` lines."""
    marks = [(m.group(1).strip(), m.start(), m.end()) for m in _HEADING.finditer(text)]
    out = {"FINDINGS": "", "IMPRESSION": ""}
    for i, (name, _, end) in enumerate(marks):
        if name in out and not out[name]:
            stop = marks[i + 1][1] if i + 1 < len(marks) else len(text)
            out[name] = " ".join(text[end:stop].split())
    return out["FINDINGS"], out["IMPRESSION"]


def _open_csv(path: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)
    else:
        with open(path, encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)


def _need(row: dict[str, str], key: str, path: Path, lineno: int) -> str:
    value = row.get(key)
    if value is None:
        raise MalformedDataError(f"{path} record {lineno} field {key!r}: missing (is this the published CSV?)")
    return value


class MIMICCXRReport(DerivedSplitTask):
    """MIMIC-CXR report generation, A3Tune-style sample (Table 6: 1,902 train / 441 test)."""

    name = "mimic-cxr-report"
    kind = "report"
    version = "1"
    metric_protocol = "coco"
    section = "§2.8, §2.9"
    dataset_id = "mimic-cxr-report"
    algorithm = "sha256-sample-v1"
    table6 = {"train": 1902, "test": 441}
    expected_layout = (
        f"DIR/{METADATA}.gz, DIR/{SPLITS_CSV}.gz\n"
        "DIR/files/p1X/p<subject_id>/s<study_id>/<dicom_id>.jpg\n"
        f"reports: DIR/{SECTIONED} (preferred), or DIR/{REPORTS_ZIP}, or DIR/files/p1X/p<subject_id>/s<study_id>.txt"
    )

    def _csv(self, name: str) -> Path:
        root = self.root()
        for cand in (root / f"{name}.gz", root / name):
            if cand.is_file():
                return cand
        raise self.layout_error(f"missing {root / name}.gz")

    def report_source(self) -> tuple[str, Path]:
        root = self.root()
        for kind, path in (("sectioned", root / SECTIONED), ("sectioned", root / f"{SECTIONED}.gz"),
                           ("zip", root / REPORTS_ZIP), ("files", root / "files")):
            if path.exists():
                return kind, path
        raise self.layout_error(f"no reports ({SECTIONED}, {REPORTS_ZIP} or files/.../s<study_id>.txt)")

    def source_files(self) -> list[Path]:
        kind, path = self.report_source()
        return [self._csv(SPLITS_CSV), self._csv(METADATA)] + ([path] if kind != "files" else [])

    def compute_assignment(self, rows: list[Row]) -> dict[str, str]:
        return {r.id: r.stratum for r in rows}

    def _frontal_studies(self) -> dict[str, list[tuple[str, str, str]]]:
        """Official split → ``[(study_id, subject_id, dicom_id)]`` with one frontal image each."""
        split_path, meta_path = self._csv(SPLITS_CSV), self._csv(METADATA)
        views: dict[str, str] = {}
        for i, row in enumerate(_open_csv(meta_path)):
            views[_need(row, "dicom_id", meta_path, i)] = _need(row, "ViewPosition", meta_path, i).strip().upper()
        studies: dict[tuple[str, str, str], list[tuple[int, str]]] = defaultdict(list)
        for i, row in enumerate(_open_csv(split_path)):
            split = _need(row, "split", split_path, i)
            if split not in SAMPLE_SIZES:
                continue
            dicom = _need(row, "dicom_id", split_path, i)
            rank = {"PA": 0, "AP": 1}.get(views.get(dicom, ""), 2)
            key = (split, _need(row, "study_id", split_path, i), _need(row, "subject_id", split_path, i))
            studies[key].append((rank, dicom))
        out: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        filtered: Counter = Counter()
        for (split, study, subject), dicoms in studies.items():
            rank, dicom = min(dicoms)
            if rank == 2:
                filtered[f"{split}: no frontal image"] += 1
                continue
            out[split].append((study, subject, dicom))
        self.provenance["filtered"] = dict(filtered)
        return out

    def read_rows(self) -> list[Row]:
        root = self.root()
        chosen: list[tuple[str, str, str, str]] = []
        for split, studies in sorted(self._frontal_studies().items()):
            studies.sort(key=lambda s: group_order_key(self.dataset_id, self.seed, s[0]))
            chosen.extend((split, *s) for s in studies[: SAMPLE_SIZES[split]])
        reports = self._reports({s[1] for s in chosen}, {s[1]: s[2] for s in chosen})
        rows = []
        for split, study, subject, dicom in chosen:
            rid = f"mimic-s{study}"
            image = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
            findings, impression, source = reports.get(study, ("", "", None))
            target = " ".join(f"{findings} {impression}".split())
            skip = None
            if source is None:
                skip = "report-missing"
            elif len(target.split()) < MIN_TOKENS:
                skip = f"short-target: {len(target.split())} tokens (minimum {MIN_TOKENS})"
            sample = Sample(
                id=rid, image_path=image, question=REPORT_INSTRUCTION, answer=target, answer_type=AnswerType.REPORT,
                split="", meta={"dataset": "mimic-cxr-report", "gold": target, "lang": "en", "study_id": study,
                                "subject_id": subject, "dicom_id": dicom, "section_source": source,
                                "official_split": split},
            )
            rows.append(Row(rid, study, split, check_hash(image, REPORT_INSTRUCTION), sample, root, skip=skip))
        return rows

    def _reports(self, studies: set[str], subjects: dict[str, str]) -> dict[str, tuple[str, str, str]]:
        """``study_id → (findings, impression, section_source)`` for the wanted studies."""
        kind, path = self.report_source()
        self.provenance["report_source"] = f"{kind}: {path.name}"
        out: dict[str, tuple[str, str, str]] = {}
        if kind == "sectioned":
            for i, row in enumerate(_open_csv(path)):
                study = _need(row, "study", path, i).lstrip("s")
                if study in studies:
                    out[study] = (row.get("findings") or "", row.get("impression") or "", "mimic_cxr_sectioned")
            return out
        texts: dict[str, str] = {}
        if kind == "zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    for name in zf.namelist():
                        stem = Path(name).stem
                        if name.endswith(".txt") and stem.startswith("s") and stem[1:] in studies:
                            texts[stem[1:]] = zf.read(name).decode("utf-8", errors="replace")
            except zipfile.BadZipFile as exc:
                raise MalformedDataError(f"{path}: not a readable zip ({exc})") from None
        else:
            for study in studies:
                subject = subjects[study]
                txt = path / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
                if txt.is_file():
                    texts[study] = txt.read_text(encoding="utf-8", errors="replace")
        for study, text in texts.items():
            out[study] = (*parse_sections(text), "medbench-parser")
        return out
