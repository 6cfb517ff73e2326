"""MIMIC-CXR report generation on a derived sample (spec §2.8, §2.9).

medbench only reads what the user supplies (credentialed PhysioNet access). Two layouts:

**MIMIC-CXR-JPG** (``provenance["layout"] = "mimic-cxr-jpg"``):
``mimic-cxr-2.0.0-metadata.csv.gz`` and ``mimic-cxr-2.0.0-split.csv.gz`` (``.csv`` also accepted)
in ``DIR`` or in the image root, images ``files/p1X/p<subject_id>/s<study_id>/<dicom_id>.jpg`` under
the image root (``image_root=`` / ``--image-root``: the MIMIC-CXR-JPG folder), else under ``DIR``,
and the reports in ``DIR``, by this priority when several are present (the one used is
``provenance["report_source"]``, the others ``provenance["report_sources_ignored"]``, with a warning):

1. ``mimic_cxr_sectioned.csv`` (MIT-LCP ``create_section_files.py``; ``section_source="mimic_cxr_sectioned"``);
2. ``mimic-cxr-reports.zip`` (the MIMIC-CXR project's reports);
3. ``files/p1X/p<subject_id>/s<study_id>.txt`` (the same reports, unpacked).

Routes 2 and 3 are sectioned by :func:`section_report` (``section_source="medbench-parser"``), which
follows MIT-LCP ``section_parser``: headings are ``\\n <UPPER CASE>:`` lines, normalised as MIT-LCP
does (``FINDINGS AND IMPRESSION``, ``CONCLUSION``, ``IMPRESSIONS``, ``FINDINGS/IMPRESSION`` and the
listed misspellings → impression; ``CHEST, TWO VIEWS``, ``PA AND LATERAL …`` → findings; …); empty
findings/impression sections are dropped and the last section of each name is used, as the sectioned
CSV holds. The studies MIT-LCP sections by hand (:data:`HAND_SECTIONED`) have no row in that CSV, so
every route skips them (``report-hand-sectioned``): the three sources give the same targets, record
for record.

**R2Gen** (``provenance["layout"] = "r2gen-annotation"``): ``DIR/annotation.json`` (or
``DIR/mimic_cxr/annotation.json``) = ``{"train": [...], "val": [...], "test": [...]}`` with one
entry per image, ``{"id": <dicom_id>, "study_id", "subject_id", "report", "image_path":
["p1X/p<subject>/s<study>/<dicom>.jpg"], "split"}``, and the images under ``images/`` next to it,
or under the image root (its ``images/``, its ``files/`` — the MIMIC-CXR-JPG folder — or itself). The
target is R2Gen's ``report`` (``section_source="r2gen-annotation"``); the frontal view is chosen with
the metadata CSV when one is in ``DIR`` or the image root, else the lowest ``dicom_id`` is taken
(``provenance["view_rule"]`` says which). Its manifest id is ``mimic-cxr-report-r2gen``.

When ``DIR`` holds both layouts, the MIMIC-CXR-JPG one (the spec's §2.8 derivation) is used and
``annotation.json`` is named in ``provenance["ignored"]``.

Derivation (both layouts): studies of the official train and test splits; one frontal image per
study (PA, else AP, lowest ``dicom_id``; studies without one are filtered); 2,000 train and 500 test
studies taken in ``sha256("mimic-cxr-report:0:<study_id>")`` order; target = findings + " " +
impression (R2Gen: its report); targets under 10 tokens (``short-target``), studies without a
report (``report-missing``) and hand-sectioned studies are unscorable rows
(:data:`~medbench.tasks._common.UNSCORABLE_RULE`). Ids are ``mimic-s<study_id>``. A manifest in
``manifests/`` overrides the sample.
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

from medbench.tasks._common import (
    DerivedSplitTask,
    MalformedDataError,
    RecordError,
    Row,
    check_hash,
    get_field,
    group_order_key,
    read_json,
)
from medbench.types import AnswerType, Sample

log = logging.getLogger("medbench.tasks")

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLITS_CSV = "mimic-cxr-2.0.0-split.csv"
SECTIONED = "mimic_cxr_sectioned.csv"
REPORTS_ZIP = "mimic-cxr-reports.zip"
ANNOTATION = "annotation.json"
REPORT_INSTRUCTION = "Analyze the chest X-ray and generate a concise medical report."
SAMPLE_SIZES = {"train": 2000, "test": 500}
MIN_TOKENS = 10
ORDER_ID = "mimic-cxr-report"  # the hash-order key of the sample, the same for both layouts
R2GEN_SPLITS = {"train": "train", "val": "validate", "test": "test"}

# ---- section parsing (MIT-LCP mimic-cxr txt/section_parser.py, heading normalisation) ---------

_HEADING = re.compile(r"\n ([A-Z ()/,-]+):\s")

#: Heading (lower case) → section, as MIT-LCP normalises them.
SECTION_ALIASES = {
    "preamble": "preamble", "impression": "impression", "comparison": "comparison",
    "indication": "indication", "findings": "findings", "examination": "examination",
    "technique": "technique", "history": "history", "comparisons": "comparison",
    "clinical history": "history", "reason for examination": "indication", "notification": "notification",
    "reason for exam": "indication", "clinical information": "history", "exam": "examination",
    "clinical indication": "indication", "conclusion": "impression", "chest, two views": "findings",
    "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "addendum": "addendum",
    "comparison exam": "comparison", "date": "date", "comment": "comment",
    "findings and impression": "impression", "wet read": "wet read", "comparison film": "comparison",
    "recommendations": "recommendations", "findings/impression": "impression", "pfi": "history",
    "recommendation": "recommendations", "wetread": "wet read",
    # MIT-LCP maps this misspelling to impression, not indication; kept for equivalence.
    "ndication": "impression",
    "impresson": "impression", "imprression": "impression", "imoression": "impression",
    "impressoin": "impression", "imprssion": "impression", "impresion": "impression",
    "imperssion": "impression", "mpression": "impression", "impession": "impression",
    "findings/ impression": "impression", "finding": "findings", "findins": "findings",
    "findindgs": "findings", "findgings": "findings", "findngs": "findings", "findnings": "findings",
    "finidngs": "findings", "idication": "indication", "reference findings": "findings",
    "comparision": "comparison", "comparsion": "comparison", "comparrison": "comparison",
    "comparisions": "comparison",
}
#: A heading not in :data:`SECTION_ALIASES` that contains one of these words is that section.
MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
#: Else a heading containing one of these phrases describes the whole study: findings.
FINDINGS_HINTS = ("chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap",
                  "frontal and", "two views", "frontal view", "pa view", "ap view", "one view", "lateral view",
                  "bone window", "frontal upright", "frontal semi-upright", "ribs", "pa and lat")
#: Studies whose sections MIT-LCP sets by hand (``custom_mimic_cxr_rules``); they have no row in
#: ``mimic_cxr_sectioned.csv``.
HAND_SECTIONED = frozenset((
    "50913680", "59363654", "59279892", "59768032", "57936451", "50058765", "53356173", "53202765",
    "50808053", "51966317", "50743547", "56451190", "59067458", "59215320", "55124749", "54365831",
    "59087630", "58157373", "56482935", "58375018", "54654948", "55157853", "51491012", "50525523",
    "57564132", "59982525", "53488209", "54875119", "50196495", "56579911", "52648681", "59889364",
    "53514462", "59505494", "53182247", "51410602", "56412866", "54986978", "59003148", "57150433",
    "56760320", "59562049", "52674888", "55258338", "59330497", "52119491", "58235663", "50798377",
    "54168089", "53071062", "56724958", "54231141", "53607029", "52035334",
))


def normalise_heading(heading: str) -> str:
    """The section a report heading belongs to (see :data:`SECTION_ALIASES` and the rules after it)."""
    key = heading.lower().strip()
    if key in SECTION_ALIASES:
        return SECTION_ALIASES[key]
    for main in MAIN_SECTIONS:
        if main in key:
            return main
    if any(hint in key for hint in FINDINGS_HINTS):
        return "findings"
    return key


def split_sections(text: str) -> list[tuple[str, str]]:
    """``[(section name, raw text)]`` in report order, headings normalised.

    A heading is ``\\n <UPPER CASE>:`` followed by whitespace; a section runs from the end of its
    heading to the newline that starts the next one (MIT-LCP resumes the search at the end of the
    heading's line, which finds the same next heading). Text before the first heading is
    ``preamble``; a report without headings is one ``full report`` section. Empty findings and
    impression sections are dropped.
    """
    found = _HEADING.search(text)
    if found is None:
        return [("full report", text)]
    out = [("preamble", text[:found.start(1)])]
    while found is not None:
        name, start = found.group(1), found.end()
        found = _HEADING.search(text, start)
        out.append((normalise_heading(name), text[start:found.start() if found else len(text)]))
    return [(name, body) for name, body in out if name not in ("findings", "impression") or body.strip()]


def section_report(text: str) -> dict[str, str]:
    """Section name → the stripped text of the *last* section of that name."""
    return {name: body.strip() for name, body in split_sections(text)}


def parse_sections(text: str) -> tuple[str, str]:
    """``(findings, impression)`` of a free-text report; whitespace collapsed, ``""`` when absent."""
    sections = section_report(text)
    return " ".join(sections.get("findings", "").split()), " ".join(sections.get("impression", "").split())


# ---- CSV helpers --------------------------------------------------------------------------------


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


def _view_rank(view: str) -> int:
    return {"PA": 0, "AP": 1}.get(view, 2)


class MIMICCXRReport(DerivedSplitTask):
    """MIMIC-CXR report generation, A3Tune-style sample (Table 6: 1,902 train / 441 test)."""

    name = "mimic-cxr-report"
    label = "MIMIC-CXR"
    kind = "report"
    version = "2"
    metric_protocol = "coco"
    section = "§2.8, §2.9"
    dataset_id = "mimic-cxr-report"
    algorithm = "sha256-sample-v1"
    table6 = {"train": 1902, "test": 441}
    expected_layout = (
        f"MIMIC-CXR-JPG: {METADATA}.gz and {SPLITS_CSV}.gz in DIR (or in --image-root),\n"
        "  images files/p1X/p<subject_id>/s<study_id>/<dicom_id>.jpg in --image-root (the MIMIC-CXR-JPG folder) "
        "or DIR,\n"
        f"  reports in DIR by priority: {SECTIONED}, {REPORTS_ZIP}, files/p1X/p<subject_id>/s<study_id>.txt\n"
        f"or R2Gen: DIR/{ANNOTATION} (or DIR/mimic_cxr/{ANNOTATION}) with images in DIR/images/p1X/... "
        "(or --image-root: a folder with images/ or files/, or the images folder itself)"
    )

    _layout: tuple[str, Path] | None = None  # resolved by layout(), once per instance

    # -- layout

    def _find_csv(self, name: str) -> Path | None:
        for base in [self.root()] + ([self.image_root] if self.image_root is not None else []):
            for cand in (base / f"{name}.gz", base / name):
                if cand.is_file():
                    return cand
        return None

    def _csv(self, name: str) -> Path:
        found = self._find_csv(name)
        if found is None:
            where = " or in the image root" if self.image_root is not None else ""
            raise self.layout_error(f"missing {self.root() / name}.gz{where}")
        return found

    def layout(self) -> tuple[str, Path]:
        """``("jpg", split CSV)`` or ``("r2gen", annotation.json)``; see the module doc for the priority."""
        if self._layout is not None:
            return self._layout
        root = self.root()
        if self.image_root is not None and not self.image_root.is_dir():
            raise self.layout_error(f"image root {self.image_root} does not exist or is not a directory")
        split_csv = self._find_csv(SPLITS_CSV)
        annotations = [root / d / ANNOTATION for d in ("", "mimic_cxr") if (root / d / ANNOTATION).is_file()]
        if split_csv is not None:
            self._layout = ("jpg", split_csv)
            if annotations:
                self.provenance["ignored"] = f"{annotations[0]} (R2Gen layout)"
                log.warning("mimic-cxr-report: both %s and the R2Gen %s are present; using the MIMIC-CXR-JPG "
                            "layout (spec §2.8). Point --data-root at the R2Gen folder alone to use R2Gen's split.",
                            split_csv.name, annotations[0])
        elif annotations:
            self._layout = ("r2gen", annotations[0])
        else:
            raise self.layout_error(f"neither {SPLITS_CSV}(.gz) nor {ANNOTATION} found under {root}")
        kind = self._layout[0]
        self.source_format = "mimic-cxr-jpg" if kind == "jpg" else "r2gen-annotation"
        self.dataset_id = "mimic-cxr-report" if kind == "jpg" else "mimic-cxr-report-r2gen"
        self.provenance["layout"] = self.source_format
        if self.image_root is not None:
            self.provenance["image_root"] = str(self.image_root)
        return self._layout

    def image_base(self) -> Path:
        """The folder the rows' image paths resolve against."""
        kind, path = self.layout()
        if kind == "jpg":
            base = self.image_root if self.image_root is not None else self.root()
            if not (base / "files").is_dir():
                raise self.layout_error(f"no files/ folder of images in {base}")
            return base
        if self.image_root is not None:
            for cand in (self.image_root / "images", self.image_root / "files"):
                if cand.is_dir():
                    return cand
            return self.image_root
        base = path.parent / "images"
        if not base.is_dir():
            raise self.layout_error(f"missing {base} (R2Gen's images folder; or pass --image-root)")
        return base

    def report_sources(self) -> list[tuple[str, Path]]:
        """The MIMIC-CXR-JPG report sources present in the data root, in priority order."""
        root = self.root()
        found = [("sectioned", p) for p in (root / SECTIONED, root / f"{SECTIONED}.gz") if p.is_file()][:1]
        if (root / REPORTS_ZIP).is_file():
            found.append(("zip", root / REPORTS_ZIP))
        if (root / "files").is_dir():
            found.append(("files", root / "files"))
        return found

    def report_source(self) -> tuple[str, Path]:
        sources = self.report_sources()
        if not sources:
            raise self.layout_error(f"no reports ({SECTIONED}, {REPORTS_ZIP} or files/.../s<study_id>.txt)")
        return sources[0]

    def source_files(self) -> list[Path]:
        kind, path = self.layout()
        if kind == "r2gen":
            return [path]
        rkind, rpath = self.report_source()
        return [self._csv(SPLITS_CSV), self._csv(METADATA)] + ([rpath] if rkind != "files" else [])

    def compute_assignment(self, rows: list[Row]) -> dict[str, str]:
        return {r.id: r.stratum for r in rows}

    # -- rows

    def _views(self) -> dict[str, str] | None:
        meta_path = self._find_csv(METADATA)
        if meta_path is None:
            return None
        views: dict[str, str] = {}
        for i, row in enumerate(_open_csv(meta_path)):
            views[_need(row, "dicom_id", meta_path, i)] = _need(row, "ViewPosition", meta_path, i).strip().upper()
        return views

    def _choose(self, studies: dict[tuple[str, str, str], list[tuple[int, str, str]]]
                ) -> dict[str, list[tuple[str, str, str, str]]]:
        """Official split → ``[(study, subject, dicom, image path)]``, one frontal image per study."""
        out: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
        filtered: Counter = Counter()
        for (split, study, subject), images in studies.items():
            rank, dicom, image = min(images)
            if rank == 2:
                filtered[f"{split}: no frontal image"] += 1
                continue
            out[split].append((study, subject, dicom, image))
        self.provenance["filtered"] = dict(filtered)
        for split, chosen in out.items():
            chosen.sort(key=lambda s: group_order_key(ORDER_ID, self.seed, s[0]))
            del chosen[SAMPLE_SIZES[split]:]
        return out

    def _jpg_studies(self) -> dict[str, list[tuple[str, str, str, str]]]:
        split_path = self._csv(SPLITS_CSV)
        self._csv(METADATA)
        views = self._views() or {}
        studies: dict[tuple[str, str, str], list[tuple[int, str, str]]] = defaultdict(list)
        for i, row in enumerate(_open_csv(split_path)):
            split = _need(row, "split", split_path, i)
            if split not in SAMPLE_SIZES:
                continue
            dicom = _need(row, "dicom_id", split_path, i)
            study, subject = _need(row, "study_id", split_path, i), _need(row, "subject_id", split_path, i)
            image = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
            studies[(split, study, subject)].append((_view_rank(views.get(dicom, "")), dicom, image))
        return self._choose(studies)

    def read_rows(self) -> list[Row]:
        kind, path = self.layout()
        base = self.image_base()
        if kind == "r2gen":
            chosen, reports = self._r2gen_studies(path)
        else:
            chosen = self._jpg_studies()
            wanted = {s[0]: s[1] for split in chosen.values() for s in split}
            reports = self._reports(set(wanted), wanted)
        rows = []
        for split in sorted(chosen):
            for study, subject, dicom, image in chosen[split]:
                rid = f"mimic-s{study}"
                findings, impression, source = reports.get(study, ("", "", None))
                target = " ".join(f"{findings} {impression}".split())
                skip = None
                if source == "hand-sectioned":
                    skip = ("report-hand-sectioned: MIT-LCP sections this report by hand, so "
                            f"{SECTIONED} has no row for it; skipped on every report source")
                elif source is None:
                    skip = "report-missing"
                elif len(target.split()) < MIN_TOKENS:
                    skip = f"short-target: {len(target.split())} tokens (minimum {MIN_TOKENS})"
                sample = Sample(
                    id=rid, image_path=image, question=REPORT_INSTRUCTION, answer=target,
                    answer_type=AnswerType.REPORT, split="",
                    meta={"dataset": "mimic-cxr-report", "gold": target, "lang": "en", "study_id": study,
                          "subject_id": subject, "dicom_id": dicom, "section_source": source,
                          "official_split": split, "layout": self.source_format},
                )
                rows.append(Row(rid, study, split, check_hash(image, REPORT_INSTRUCTION), sample, base, skip=skip))
        return rows

    # -- R2Gen

    def _r2gen_studies(self, path: Path) -> tuple[dict[str, list[tuple[str, str, str, str]]],
                                                   dict[str, tuple[str, str, str]]]:
        data = read_json(path)
        if not isinstance(data, dict) or not any(isinstance(data.get(k), list) for k in R2GEN_SPLITS):
            raise MalformedDataError(f"{path}: expected an object with lists under 'train', 'val', 'test'")
        views = self._views()
        self.provenance["view_rule"] = ("PA, else AP, lowest dicom_id (metadata CSV)" if views is not None else
                                        "lowest dicom_id (no metadata CSV, views not checked)")
        studies: dict[tuple[str, str, str], list[tuple[int, str, str]]] = defaultdict(list)
        texts: dict[str, str] = {}
        bad = 0
        for key, split in R2GEN_SPLITS.items():
            entries = data.get(key) or []
            if not isinstance(entries, list):
                raise MalformedDataError(f"{path}: expected a list under {key!r}")
            if split not in SAMPLE_SIZES:
                continue
            for i, rec in enumerate(entries):
                where = f"{key}[{i}]"
                try:
                    study = str(get_field(rec, "study_id", (str, int), path, where)).lstrip("s")
                    subject = str(get_field(rec, "subject_id", (str, int), path, where)).lstrip("p")
                    report = get_field(rec, "report", str, path, where, required=False, default="")
                    images = get_field(rec, "image_path", list, path, where)
                    if not images or not isinstance(images[0], str):
                        raise RecordError(path, where, "image_path", "expected a non-empty list of paths")
                except RecordError as exc:
                    if self.strict:
                        raise MalformedDataError(str(exc)) from exc
                    self.skip(f"mimic-r2gen-{where}", f"malformed: {exc}")
                    self._outside_split += 1
                    bad += 1
                    continue
                dicom = Path(images[0]).stem
                rank = _view_rank(views.get(dicom, "")) if views is not None else 0
                studies[(split, study, subject)].append((rank, dicom, images[0]))
                if report.strip():
                    texts.setdefault(study, report)
        chosen = self._choose(studies)
        reports = {study: ("", text, "r2gen-annotation") for study, text in texts.items()}
        self.provenance["report_source"] = f"r2gen: {path.name}"
        if bad:
            self.provenance["malformed_entries"] = bad
        return chosen, reports

    # -- MIMIC-CXR reports

    def _reports(self, studies: set[str], subjects: dict[str, str]) -> dict[str, tuple[str, str, str]]:
        """``study_id → (findings, impression, section_source)`` for the wanted studies."""
        kind, path = self.report_source()
        self.provenance["report_source"] = f"{kind}: {path.name}"
        out: dict[str, tuple[str, str, str]] = {
            s: ("", "", "hand-sectioned") for s in studies & HAND_SECTIONED}
        wanted = studies - HAND_SECTIONED
        if kind == "sectioned":
            for i, row in enumerate(_open_csv(path)):
                study = _need(row, "study", path, i).lstrip("s")
                if study in wanted:
                    out[study] = (" ".join((row.get("findings") or "").split()),
                                  " ".join((row.get("impression") or "").split()), "mimic_cxr_sectioned")
        else:
            texts = self._zip_texts(path, wanted) if kind == "zip" else self._file_texts(path, wanted, subjects)
            if wanted and not texts and kind == "files":
                raise self.layout_error(f"no report files/p1X/p<subject_id>/s<study_id>.txt for any of the "
                                        f"{len(wanted)} sampled studies under {path}")
            for study, text in texts.items():
                out[study] = (*parse_sections(text), "medbench-parser")
        self._note_ignored(kind, wanted, subjects)
        return out

    def _note_ignored(self, used: str, wanted: set[str], subjects: dict[str, str]) -> None:
        ignored = []
        for kind, path in self.report_sources():
            if kind == used:
                continue
            if kind == "files" and not self._file_texts(path, set(sorted(wanted)[:50]), subjects, first=True):
                continue  # files/ holds images only
            ignored.append(f"{kind}: {path.name}")
        if ignored:
            self.provenance["report_sources_ignored"] = ignored
            log.warning("mimic-cxr-report: several report sources in %s; using %s (priority: %s, %s, loose "
                        ".txt files), ignoring %s", self.root(), self.provenance["report_source"], SECTIONED,
                        REPORTS_ZIP, ", ".join(ignored))

    @staticmethod
    def _zip_texts(path: Path, studies: set[str]) -> dict[str, str]:
        texts: dict[str, str] = {}
        try:
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    stem = Path(name).stem
                    if name.endswith(".txt") and stem.startswith("s") and stem[1:] in studies:
                        texts[stem[1:]] = zf.read(name).decode("utf-8", errors="replace")
        except zipfile.BadZipFile as exc:
            raise MalformedDataError(f"{path}: not a readable zip ({exc})") from None
        return texts

    @staticmethod
    def _file_texts(path: Path, studies: set[str], subjects: dict[str, str], first: bool = False) -> dict[str, str]:
        texts: dict[str, str] = {}
        for study in sorted(studies):
            subject = subjects[study]
            txt = path / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            if txt.is_file():
                texts[study] = txt.read_text(encoding="utf-8", errors="replace")
                if first:
                    break
        return texts
