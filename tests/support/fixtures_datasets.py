"""Tiny fixture datasets written in the exact published layouts (a handful of records each).

Images are generated 64×48 and 48×64 pictures in RGB and L. Every writer returns the directory to
pass as ``--data-root``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

SIZES = ((64, 48, "RGB"), (48, 64, "L"))


def write_image(path: Path, index: int = 0) -> Path:
    """A small gradient image; the size and mode alternate with ``index``."""
    w, h, mode = SIZES[index % 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new(mode, (w, h))
    im.putdata([((x * 4 + y + index * 17) % 256) if mode == "L" else ((x * 4) % 256, (y * 4) % 256, index * 40 % 256)
                for y in range(h) for x in range(w)])
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    im.save(path, format=fmt)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- SLAKE ---------------------------------------------------------------------------------

DETECTION = [{"Liver": [10, 12, 20, 16]}, {"Left Lung": [30, 5, 10, 10]}]


def slake_record(qid: int, img: int, question: str, answer: Any, kind: str, lang: str = "en",
                 base_type: str = "vqa") -> dict[str, Any]:
    return {"img_id": img, "img_name": f"xmlab{img}/source.jpg", "question": question, "answer": answer,
            "q_lang": lang, "location": "Abdomen", "modality": "CT", "answer_type": kind, "base_type": base_type,
            "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}


def write_slake(root: Path, *, val_name: str = "validation.json") -> Path:
    base = root / "Slake1.0"
    for img in (1, 2, 3):
        write_image(base / "imgs" / f"xmlab{img}" / "source.jpg", img)
        write_image(base / "imgs" / f"xmlab{img}" / "mask.png", img)
        write_json(base / "imgs" / f"xmlab{img}" / "question.json", [])
    write_json(base / "imgs" / "xmlab1" / "detection.json", DETECTION)
    write_json(base / "imgs" / "xmlab2" / "detection.json", DETECTION)
    write_json(base / "imgs" / "xmlab3" / "detection.json", [])
    train = [
        slake_record(0, 1, "Where is the liver?", "Upper Left", "OPEN"),
        slake_record(1, 1, "Does the left_lung look normal?", "Yes", "CLOSED"),
        slake_record(2, 1, "肝脏在哪里？", "左上", "OPEN", lang="zh"),
        slake_record(3, 2, "Which organ is abnormal?", "Liver", "OPEN", base_type="kg"),
        slake_record(4, 2, "What modality is used?", "CT", "OPEN"),
    ]
    test = [
        slake_record(10, 1, "Is the lung healthy?", "Yes", "CLOSED"),
        slake_record(11, 2, "What modality is used?", "CT", "OPEN"),
        slake_record(12, 3, "How many kidneys are there?", 2, "OPEN"),
        slake_record(13, 2, "这是什么模态？", "CT", "OPEN", lang="zh"),
    ]
    write_json(base / "train.json", train)
    write_json(base / "test.json", test)
    write_json(base / val_name, [slake_record(20, 3, "Is this a CT?", "Yes", "CLOSED")])
    return root


# ---- VQA-RAD -------------------------------------------------------------------------------


def vqarad_record(qid: Any, phrase: str, image: str, question: str, answer: Any, kind: str) -> dict[str, Any]:
    return {"qid": qid, "phrase_type": phrase, "qid_linked_id": f"id-{qid}", "image_case_url": "https://example.org",
            "image_name": image, "image_organ": "HEAD", "evaluation": "not evaluated", "question": question,
            "question_rephrase": "NULL", "question_relation": "NULL", "question_frame": "NULL",
            "question_type": "PRES", "answer": answer, "answer_type": kind}


def write_vqa_rad(root: Path) -> Path:
    for i, name in enumerate(("synpic100.jpg", "synpic200.jpg")):
        write_image(root / "VQA_RAD Image Folder" / name, i)
    records = [
        vqarad_record("0", "freeform", "synpic100.jpg", "Is there a fracture?", "Yes", "CLOSED"),
        vqarad_record(1, "para", "synpic100.jpg", "Is a fracture present?", "Yes", "CLOSED "),
        vqarad_record("2", "test_freeform", "synpic200.jpg", "What organ is shown?", "Brain", "OPEN"),
        vqarad_record(3, "test_para", "synpic100.jpg", "Is the image normal?", "No", "CLOSED "),
        vqarad_record("4", "freeform", "synpic200.jpg", "How many lesions?", 2, "OPEN"),
    ]
    write_json(root / "VQA_RAD Dataset Public.json", records)
    return root


# ---- PathVQA -------------------------------------------------------------------------------


def pvqa_record(qid: int, img: str, question: str, label: dict[str, int], kind: str) -> dict[str, Any]:
    return {"answer_type": kind, "img_id": img, "label": label, "question_id": qid,
            "question_type": "what" if kind == "other" else "yes/no", "sent": question}


def write_pathvqa(root: Path) -> Path:
    base = root / "pvqa"
    splits = {
        "train": ([pvqa_record(100, "train_0001", "Where are liver stem cells located?",
                               {"in the canals of hering": 1}, "other"),
                   pvqa_record(101, "train_0001", "Is this liver?", {"yes": 1}, "yes/no"),
                   pvqa_record(102, "train_0002", "What is seen?", {"a": 1, "b": 1}, "other")], 2),
        "val": ([pvqa_record(200, "val_0001", "Is this normal?", {"no": 1}, "yes/no")], 4),
        "test": ([pvqa_record(300, "test_0001", "What stain is used?", {"h&e": 1}, "other"),
                  pvqa_record(301, "test_0002", "Is there necrosis?", {"no": 1}, "yes/no")], 4),
    }
    for split, (records, protocol) in splits.items():
        (base / "qas").mkdir(parents=True, exist_ok=True)
        (base / "qas" / f"{split}_vqa.pkl").write_bytes(pickle.dumps(records, protocol=protocol))
        qa = [{"image": r["img_id"], "question": r["sent"], "answer": next(iter(r["label"]))} for r in records]
        (base / "qas" / split).mkdir(exist_ok=True)
        (base / "qas" / split / f"{split}_qa.pkl").write_bytes(pickle.dumps(qa, protocol=protocol))
        for i, img in enumerate(sorted({r["img_id"] for r in records})):
            write_image(base / "images" / split / f"{img}.jpg", i)
    (base / "qas" / "trainval_ans2label.pkl").write_bytes(pickle.dumps({"yes": 0, "no": 1}, protocol=2))
    return root


def write_pathvqa_parquet(root: Path) -> Path:
    """The ``flaviagiammarino/path-vqa`` layout (needs pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 60)).save(buf, format="JPEG")
    for split, qa in (("train", [("what is shown?", "liver"), ("is this normal?", "yes")]),
                      ("validation", [("is it benign?", "no")]),
                      ("test", [("what stain?", "h&e"), ("is there necrosis?", "no")])):
        table = pa.table({"image": [{"bytes": buf.getvalue(), "path": f"img_{i}.jpg"} for i in range(len(qa))],
                          "question": [q for q, _ in qa], "answer": [a for _, a in qa]})
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


# ---- IU-Xray (R2Gen reports and CARES VQA) ---------------------------------------------------

R2GEN = {
    "train": [("CXR1_IM-0001", "The heart is normal. The lungs are clear. No XXXX."),
              ("CXR2_IM-0002", "Mild cardiomegaly. No pleural effusion.")],
    "val": [("CXR3_IM-0003", "No acute cardiopulmonary abnormality.")],
    "test": [("CXR4_IM-0004", "Heart size normal. Lungs clear."), ("CXR5_IM-0005", "Small left effusion.")],
}


def write_r2gen(root: Path) -> Path:
    base = root / "iu_xray"
    ann: dict[str, list[dict[str, Any]]] = {}
    for i, (split, entries) in enumerate(R2GEN.items()):
        ann[split] = []
        for j, (sid, report) in enumerate(entries):
            for view in (0, 1):
                write_image(base / "images" / sid / f"{view}.png", i + j + view)
            ann[split].append({"id": sid, "report": report, "image_path": [f"{sid}/0.png", f"{sid}/1.png"],
                               "split": split})
    write_json(base / "annotation.json", ann)
    return root


CARES_SUFFIX = " Please choose from the following two options: [yes, no]\n<image>"
CARES_ROWS = [
    ("CXR1_IM-0001/0.png", "Is the heart size normal?", "Yes."),
    ("CXR1_IM-0001/0.png", "Is there a pleural effusion?", "No."),
    ("CXR1_IM-0001/0.png", "Is there a pneumothorax?", "No (the lungs are clear)."),
    ("CXR2_IM-0002/0.png", "Is there cardiomegaly?", "Yes"),
    ("CXR2_IM-0002/0.png", "Is there a chronic condition?", "The report does not say, unable to determine."),
    ("CXR2_IM-0002/0.png", "Are the bones intact?", ""),
    ("CXR4_IM-0004/0.png", "Are the lungs clear?", "Yes."),
    ("CXR4_IM-0004/0.png", "Is there a mass?", "No."),
    ("CXR5_IM-0005/0.png", "Is there an effusion?", "Yes, a small left effusion."),
    ("CXR5_IM-0005/0.png", "Is the heart enlarged?", "No."),
    ("CXR3_IM-0003/0.png", "Is there consolidation?", "No."),
    ("CXR3_IM-0003/0.png", "Is the mediastinum wide?", "no"),
]


def write_cares_iuxray(root: Path, rows: list[tuple[str, str, str]] | None = None) -> Path:
    """CARES ``iuxray_factuality.jsonl`` plus the R2Gen images it points at."""
    write_r2gen(root)
    lines = []
    for image, question, answer in rows or CARES_ROWS:
        q = question + CARES_SUFFIX
        lines.append({"question": q, "answer": answer, "image": image, "question_id": 0, "text": q})
    write_jsonl(root / "iuxray_factuality.jsonl", lines)
    return root


# ---- OmniMedVQA ------------------------------------------------------------------------------


def omni_record(qid: int, dataset: str, image: str, text: str, answer: str, options: list[str]) -> dict[str, Any]:
    rec = {"question_id": qid, "dataset": dataset, "image": image, "text": text, "answer": answer}
    rec.update({f"option_{letter}": opt for letter, opt in zip("ABCD", options)})
    return rec


def write_omnimedvqa(root: Path) -> Path:
    rows = []
    four = ["CT", "MRI", "X-ray", "Fundus photography"]
    for i in range(4):
        image = f"Images/Adam Challenge/AMD/A{i:04d}.jpg"
        write_image(root / image, i)
        rows.append(omni_record(i, "Adam Challenge", image, "What modality is used?", "Fundus photography", four))
    for i in range(3):
        image = f"Images/Chest CT Scan/scan_{i}.png"
        write_image(root / image, i + 1)
        rows.append(omni_record(10 + i, "Chest CT Scan", image, "Is this image abnormal?", "yes", ["yes", "no"]))
    rows.append(omni_record(20, "Chest CT Scan", "Images/Chest CT Scan/scan_0.png", "Which side?", "both",
                            ["left", "right"]))
    write_jsonl(root / "omnimedvqa_factuality.jsonl", rows)
    return root


def release_record(qid: str, dataset: str, image: str, question: str, answer: str, options: list[str],
                   modality: str = "Fundus Photography") -> dict[str, Any]:
    """One record of the official OmniMedVQA release (``QA_information/<access>/<Dataset>.json``)."""
    rec = {"dataset": dataset, "question_id": qid, "question_type": "Modality Recognition", "question": question,
           "gt_answer": answer, "image_path": image, "modality_type": modality}
    rec.update({f"option_{letter}": opt for letter, opt in zip("ABCD", options)})
    return rec


# (access, dataset, question_id, image, question, gt_answer, options)
OMNI_RELEASE = [
    ("Open-access", "ACRIMA", "ACRIMA_0000", "Images/ACRIMA/Im001.png", "What modality is shown?",
     "Fundus photography", ["CT", "MRI", "X-ray", "Fundus photography"]),
    ("Open-access", "ACRIMA", "ACRIMA_0001", "Images/ACRIMA/Im002.png", "Is there glaucoma?",
     "No, It's normal.", ["No, It's normal.", "Yes, It's glaucoma."]),
    ("Open-access", "ACRIMA", "ACRIMA_0002", "Images/ACRIMA/Im003.png", "Which imaging technique?",
     "Dermoscopy.", ["Dermoscopy", "Endoscopy", "Ultrasound"]),
    ("Open-access", "ACRIMA", "ACRIMA_0003", "Images/ACRIMA/Im003.png", "Which eye?", "B", ["Left", "Right"]),
    ("Open-access", "Thyroid US", "ThyroidUS_0000", "Images/Thyroid US/t1.jpg", "Which organ is imaged?",
     "C:Thyroid", ["Liver", "Kidney", "Thyroid", "Heart"]),
    ("Open-access", "Thyroid US", "ThyroidUS_0001", "Images/Thyroid US/t2.jpg", "Is the nodule benign?",
     "(A) yes", ["yes", "no"]),
    ("Open-access", "Thyroid US", "ThyroidUS_0002", "Images/Thyroid US/t3.jpg", "Which organ?",
     "B:Liver", ["Liver", "Kidney"]),  # the letter and the text disagree: unscorable
    ("Open-access", "Thyroid US", "ThyroidUS_0003", "Images/Thyroid US/t4.jpg", "Which side?", "both",
     ["left", "right"]),  # matches no option: unscorable
    ("Open-access", "Thyroid US", "ThyroidUS_0001", "Images/Thyroid US/t2.jpg", "Repeated id?", "yes",
     ["yes", "no"]),  # a repeated question_id
    ("Restricted-access", "AIDA", "AIDA_0000", "Images/AIDA/a1.png", "What organ?", "Colon, sigmoid",
     ["Colon, sigmoid", "Stomach"]),
    ("Restricted-access", "AIDA", "AIDA_0001", "Images/AIDA/a2.png", "What modality?", "Endoscopy",
     ["Endoscopy", "CT"]),  # restricted images are not in the public download: this one is absent
]


def write_omnimedvqa_release(root: Path, *, access: tuple[str, ...] = ("Open-access", "Restricted-access"),
                             images: Path | None = None) -> Path:
    """The official release ``OmniMedVQA/{QA_information/<access>/<Dataset>.json, Images/<Dataset>/...}``;
    returns the ``OmniMedVQA`` folder. ``images``: write ``Images/`` under that folder instead."""
    base = root / "OmniMedVQA"
    img_base = images if images is not None else base
    files: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for k, (acc, dataset, qid, image, question, answer, options) in enumerate(OMNI_RELEASE):
        if acc not in access:
            continue
        files.setdefault((acc, dataset), []).append(release_record(qid, dataset, image, question, answer, options))
        if qid != "AIDA_0001":
            write_image(img_base / image, k)
    for (acc, dataset), records in files.items():
        write_json(base / "QA_information" / acc / f"{dataset}.json", records)
    return base


# ---- MIMIC-CXR-JPG ---------------------------------------------------------------------------

LONG_FINDINGS = "The lungs are clear without focal consolidation. The cardiomediastinal silhouette is normal."
# Free-text reports as the MIMIC-CXR project writes them (a heading is "\n <UPPER CASE>:") and the row
# MIT-LCP's create_section_files.py writes for each into mimic_cxr_sectioned.csv (None: no row).
MIMIC_REPORTS: dict[str, tuple[str, tuple[str, str] | None]] = {
    "50000001": (f"                                 FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS: {LONG_FINDINGS}\n\n"
                 " IMPRESSION: No acute process.\n", (LONG_FINDINGS, "No acute process.")),
    # the combined heading is impression (MIT-LCP), not a dropped report
    "50000002": ("                                 FINAL REPORT\n INDICATION: ___ with dyspnea.\n\n"
                 " FINDINGS AND IMPRESSION: Stable moderate cardiomegaly with mild pulmonary edema\n and small "
                 "bilateral effusions.\n", ("", "Stable moderate cardiomegaly with mild pulmonary edema\n and small "
                                             "bilateral effusions.")),
    "50000003": (f" FINAL REPORT\n FINDINGS: {LONG_FINDINGS}\n IMPRESSION: Normal.\n", (LONG_FINDINGS, "Normal.")),
    # CONCLUSION is impression
    "50000004": (f"                                 FINAL REPORT\n COMPARISON: None.\n\n FINDINGS: {LONG_FINDINGS}\n\n"
                 " CONCLUSION: No pneumonia.\n", (LONG_FINDINGS, "No pneumonia.")),
    "50000005": ("                                 FINAL REPORT\n IMPRESSION: Normal.\n", ("", "Normal.")),
    # IMPRESSIONS contains "impression"; a wet read before the findings is its own section
    "50000007": (f"WET READ: ___ no pneumothorax\n\n FINDINGS: {LONG_FINDINGS}\n \n IMPRESSIONS: Unchanged.\n",
                 (LONG_FINDINGS, "Unchanged.")),
    "50000008": (f" FINAL REPORT\n FINDINGS: {LONG_FINDINGS}\n IMPRESSION: Normal.\n", (LONG_FINDINGS, "Normal.")),
    # a view heading is findings; a misspelt impression heading is impression
    "50000009": ("                                 FINAL REPORT\n PA AND LATERAL VIEWS OF THE CHEST: Heart size is "
                 "normal. The lungs are clear. No effusion or pneumothorax is seen.\n\n IMPRESSON: Normal chest.\n",
                 ("Heart size is normal. The lungs are clear. No effusion or pneumothorax is seen.", "Normal chest.")),
    # an empty FINDINGS section is dropped, the last non-empty one kept; a heading inside a line is not one
    "50000010": (" FINAL REPORT\n FINDINGS:\n \n FINDINGS: Low lung volumes. NOTE: bibasilar atelectasis is present. There is no "
                 "pneumothorax or effusion.\n \n IMPRESSION: Atelectasis.\n",
                 ("Low lung volumes. NOTE: bibasilar atelectasis is present. There is no pneumothorax or effusion.",
                  "Atelectasis.")),
    # MIT-LCP sections this study by hand: no row in the sectioned CSV
    "50913680": (f" FINAL REPORT\n FINDINGS: {LONG_FINDINGS}\n IMPRESSION: Normal.\n", None),
    # no headings at all: neither findings nor impression
    "50000012": ("The lungs are clear. The heart is normal in size. There is no effusion or pneumothorax seen.\n",
                 ("", "")),
}
MIMIC_STUDIES = [
    # (subject, study, split, [(dicom, view)]); a study without a MIMIC_REPORTS entry has no report
    ("10000001", "50000001", "train", [("d3", "LATERAL"), ("d2", "PA"), ("d1", "PA")]),
    ("10000002", "50000002", "train", [("d4", "AP")]),
    ("10000003", "50000003", "train", [("d5", "LATERAL")]),
    ("10000004", "50000004", "test", [("d6", "PA")]),
    ("10000005", "50000005", "test", [("d7", "AP")]),
    ("10000006", "50000006", "test", [("d8", "PA")]),
    ("10000007", "50000007", "test", [("d9", "AP")]),
    ("10000008", "50000008", "validate", [("d10", "PA")]),
    ("10000009", "50000009", "test", [("d11", "LATERAL"), ("d12", "AP"), ("d13", "PA")]),
    ("10000010", "50000010", "test", [("d14", "PA")]),
    ("11851243", "50913680", "test", [("d15", "PA")]),
    ("10000012", "50000012", "test", [("d16", "PA")]),
]


def _write_csv_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())


def write_mimic(root: Path, reports: str | tuple[str, ...] = "sectioned", *, images: Path | None = None,
                csvs: Path | None = None) -> Path:
    """MIMIC-CXR-JPG files; ``reports`` is ``"sectioned"`` (CSV), ``"zip"`` or ``"files"`` (loose .txt), or a
    tuple of them (a mix). ``images``/``csvs``: write the JPGs / the metadata and split CSVs there instead
    (the MIMIC-CXR-JPG folder, when the reports live in another one)."""
    kinds = (reports,) if isinstance(reports, str) else reports
    images, csvs = images or root, csvs or root
    root.mkdir(parents=True, exist_ok=True)
    meta, split_rows, sectioned = [], [], []
    texts: dict[str, str] = {}
    for k, (subject, study, split, dicoms) in enumerate(MIMIC_STUDIES):
        for j, (dicom, view) in enumerate(dicoms):
            write_image(images / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", k + j)
            meta.append([dicom, subject, study, "CHEST (PA AND LAT)", view, "48", "64"])
            split_rows.append([dicom, study, subject, split])
        if study not in MIMIC_REPORTS:
            continue
        text, row = MIMIC_REPORTS[study]
        if row is not None:
            sectioned.append([f"s{study}", row[1] or None, row[0] or None, None, None])
        texts[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = text
    _write_csv_gz(csvs / "mimic-cxr-2.0.0-metadata.csv.gz",
                  ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns"], meta)
    _write_csv_gz(csvs / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    if "sectioned" in kinds:
        with open(root / "mimic_cxr_sectioned.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["study", "impression", "findings", "last_paragraph", "comparison"])
            writer.writerows(sectioned)
    if "zip" in kinds:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
            for name, text in texts.items():
                zf.writestr(name, text)
    if "files" in kinds:
        for name, text in texts.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8")
    return root


# R2Gen's MIMIC-CXR annotation.json: one entry per image (id = dicom_id), the study's cleaned report.
R2GEN_MIMIC = [
    # (split, subject, study, [dicoms], report)
    ("train", "10000032", "50414267", ["02aa804e", "174413ec"],
     "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities are seen."),
    ("train", "10000033", "50414268", ["2a2277a9"], "Heart size is normal. Lungs are clear."),
    ("val", "10000034", "50414269", ["3b3388b0"], "No acute cardiopulmonary process is seen on this radiograph today."),
    ("test", "10000035", "50414270", ["4c4499c1", "0d0000aa"],
     "The cardiac silhouette is enlarged. There is mild pulmonary vascular congestion without edema."),
    ("test", "10000036", "50414271", ["5d55aad2"], ""),
    ("test", "10000037", "50414272", ["6e66bbe3"],
     "Lungs are well expanded and clear. No pleural effusion or pneumothorax is present."),
]


def write_mimic_r2gen(root: Path, *, images: Path | None = None) -> Path:
    """R2Gen's ``mimic_cxr/{annotation.json, images/p1X/...}`` (images under ``images`` if given)."""
    base = root / "mimic_cxr"
    img_base = images if images is not None else base / "images"
    ann: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for k, (split, subject, study, dicoms, report) in enumerate(R2GEN_MIMIC):
        for j, dicom in enumerate(dicoms):
            rel = f"p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
            write_image(img_base / rel, k + j)
            ann[split].append({"id": dicom, "study_id": int(study), "subject_id": int(subject), "report": report,
                               "image_path": [rel], "split": split})
    write_json(base / "annotation.json", ann)
    return root


# ---- end to end --------------------------------------------------------------------------------

TINY_WEIGHTS = Path(__file__).resolve().parents[2] / "medbench" / "assets" / "tiny-med-llava" / "model.safetensors"


def run_tiny(task: str, data_root: Path, out: Path, *extra: str) -> dict[str, Any]:
    """``medbench run --method greedy`` with the shipped tiny model (plus ``extra`` flags); returns results.json."""
    from medbench.cli import main

    rc = main(["-q", "run", "--method", "greedy", "--task", task, "--data-root", str(data_root),
               "--output-dir", str(out), "--limit", "3", "--max-new-tokens", "4", "--device", "cpu", *extra])
    assert rc == 0
    found = list(out.rglob("results.json"))
    assert len(found) == 1
    return json.loads(found[0].read_text())
