"""Shared task machinery (and PathVQA's restricted unpickler): safe paths, derived splits, manifests, data check CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from fixtures_datasets import write_cares_iuxray, write_vqa_rad

from medbench.cli import main
from medbench.task import DataRootError
from medbench.tasks._common import (
    MalformedDataError,
    UnsafePathError,
    grouped_split,
    manifest_bytes,
    read_manifest,
    safe_join,
    strip_image_placeholder,
    yes_no_gold,
)
from medbench.tasks.iu_xray import IUXrayVQA
from medbench.tasks.pathvqa import UnsafePickleError, safe_pickle_load

# ---- restricted unpickler --------------------------------------------------------------------


def test_unpickler_loads_plain_containers(tmp_path: Path) -> None:
    data: list = [{"a": 1, 2: (1.5, None, True)}, {"s": {1, 2}, "f": frozenset({"x"})}, "text", -(2**70)]
    for protocol in (0, 2, 4, 5):
        if protocol >= 3:
            data.append(b"raw")  # Python 3 writes bytes below protocol 3 via _codecs.encode, which is refused
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert safe_pickle_load(path) == data


def _global_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 GLOBAL opcode: ``module.name(arg)``."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def _stack_global_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol-4 STACK_GLOBAL opcode: ``module.name(arg)``."""
    def short(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    return b"\x80\x04" + short(module) + short(name) + b"\x93" + short(arg) + b"\x85R."


@pytest.mark.parametrize("build", [_global_pickle, _stack_global_pickle])
@pytest.mark.parametrize("target", [("os", "system"), ("posix", "system"), ("builtins", "eval")])
def test_unpickler_refuses_code(tmp_path: Path, build, target) -> None:
    sentinel = tmp_path / "pwned"
    arg = f"open({str(sentinel)!r}, 'w')" if target[1] == "eval" else f"touch {sentinel}"
    path = tmp_path / "evil.pkl"
    path.write_bytes(build(*target, arg))
    with pytest.raises(UnsafePickleError, match=rf"{target[0]}\.{target[1]}") as info:
        safe_pickle_load(path)
    assert str(path) in str(info.value) and "only dict/list/tuple" in str(info.value)
    assert not sentinel.exists()


def test_unpickler_refuses_numpy_and_reduce(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps([np.int64(3)], protocol=2))
    with pytest.raises(UnsafePickleError, match="numpy"):
        safe_pickle_load(path)
    path.write_bytes(pickle.dumps(Path("x"), protocol=2))
    with pytest.raises(UnsafePickleError, match="pathlib"):
        safe_pickle_load(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(MalformedDataError, match="not a readable pickle"):
        safe_pickle_load(path)


# ---- paths and answers -----------------------------------------------------------------------


def test_safe_join(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    assert safe_join(tmp_path, "a/../b.png") == tmp_path / "b.png"
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", "", "a\x00b", None):
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, bad)


def test_yes_no_gold_and_placeholder() -> None:
    assert yes_no_gold("Yes.") == "yes"
    assert yes_no_gold("No (since the lungs are clear).") == "no"
    assert yes_no_gold("The report does not mention it, so the answer would be no.") == "no"
    assert yes_no_gold("Unable to determine; nodule not seen") is None
    assert yes_no_gold("") is None
    assert strip_image_placeholder("Is it normal? [yes, no]\n<image>") == "Is it normal? [yes, no]"
    assert strip_image_placeholder("<image>\nWhat is it?") == "What is it?"


# ---- derived splits and manifests --------------------------------------------------------------


def _rows(n_groups: int = 40) -> list[tuple[str, str, str]]:
    return [(f"r{g}-{k}", f"img{g}", "s" if g % 3 else "t") for g in range(n_groups) for k in range(1 + g % 4)]


def test_grouped_split_is_deterministic_and_grouped() -> None:
    import hashlib

    from medbench.tasks._common import group_order_key

    assert group_order_key("demo", 0, "img1") == hashlib.sha256(b"demo:0:img1").hexdigest()
    rows = _rows()
    a = grouped_split(rows, "demo", seed=0)
    assert a == grouped_split(list(reversed(rows)), "demo", seed=0)
    assert a != grouped_split(rows, "demo", seed=1)
    for group in {g for _, g, _ in rows}:
        assert len({a[r] for r, g, _ in rows if g == group}) == 1
    for stratum in ("s", "t"):
        ids = [r for r, _, s in rows if s == stratum]
        n_test = sum(a[r] == "test" for r in ids)
        assert n_test >= round(0.3 * len(ids))
        assert n_test - round(0.3 * len(ids)) < 4


def test_manifest_is_byte_identical_and_authoritative(tmp_path: Path) -> None:
    root = write_cares_iuxray(tmp_path / "data")
    out1, out2 = tmp_path / "m1", tmp_path / "m2"
    p1 = IUXrayVQA(root).write_manifest(out1)
    p2 = IUXrayVQA(root).write_manifest(out2)
    assert p1.read_bytes() == p2.read_bytes()
    manifest = read_manifest(p1)
    assert manifest["n_rows"] == 12 and manifest["algorithm"] == "sha256-group-v1"
    assert set(manifest["ids"]["train"]).isdisjoint(manifest["ids"]["test"])
    assert manifest["source_files"][0]["relpath"] == "iuxray_factuality.jsonl"
    assert manifest_bytes(manifest) == p1.read_bytes()
    # the manifest wins over the computed split
    manifest["ids"] = {"train": [], "test": sorted(manifest["ids"]["train"] + manifest["ids"]["test"])}
    p1.write_bytes(manifest_bytes(manifest))
    task = IUXrayVQA(root, manifest_dir=out1)
    assert task.load("train") == []
    assert len(task.load("test")) == 10
    assert task.provenance["split_source"].startswith("manifest")


def test_manifest_refuses_changed_source(tmp_path: Path) -> None:
    root = write_cares_iuxray(tmp_path / "data")
    IUXrayVQA(root).write_manifest(tmp_path / "m")
    with open(root / "iuxray_factuality.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"question": "Is it? [yes, no]\n<image>", "answer": "Yes.",
                             "image": "CXR1_IM-0001/0.png", "question_id": 0, "text": "x"}) + "\n")
    with pytest.raises(MalformedDataError, match="differs from the one split manifest"):
        IUXrayVQA(root, manifest_dir=tmp_path / "m").load("test")
    task = IUXrayVQA(root, manifest_dir=tmp_path / "m", allow_source_mismatch=True)
    task.load("test")
    assert task.provenance["source_mismatch_allowed"]
    assert any(s.reason == "not-in-manifest" for s in task.skipped)
    manifest = read_manifest(tmp_path / "m" / "iu-xray-vqa-cares.v1.json")
    assert task.count_checks["test"]["rows"] == len(manifest["ids"]["test"])  # the row outside the manifest is none


# ---- data check CLI ----------------------------------------------------------------------------


def test_data_check_json(tmp_path: Path, capsys) -> None:
    root = write_vqa_rad(tmp_path / "rad")
    (root / "VQA_RAD Image Folder" / "synpic200.jpg").write_bytes(b"broken")
    assert main(["data", "check", "--task", "vqa-rad", "--data-root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "vqa-rad"
    assert out["splits"]["train"] == {"rows": 3, "n": 2, "unscorable": 0, "open": 0, "closed": 2, "mc": 0,
                                      "report": 0}
    assert out["splits"]["test"]["rows"] == 2 and out["image_root"] is None  # an unreadable image is still a row
    assert out["splits"]["test"]["n"] == 1
    assert {s["id"] for s in out["skipped"]} == {"vqarad-2", "vqarad-4"}
    assert all(s["reason"].startswith("image-unreadable") for s in out["skipped"])
    assert out["count_checks"]["test"]["table6"] == 451


def test_data_check_text_and_wrong_layout(tmp_path: Path, capsys) -> None:
    root = write_vqa_rad(tmp_path / "rad")
    assert main(["data", "check", "--task", "vqa-rad", "--data-root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "Table 6" in text and "DIFFERS" in text
    assert main(["data", "check", "--task", "vqa-rad", "--data-root", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "VQA_RAD Dataset Public.json" in err and "phantom-vqa" in err


def test_data_manifest_command(tmp_path: Path, capsys) -> None:
    root = write_cares_iuxray(tmp_path / "data")
    assert main(["data", "manifest", "--task", "iu-xray-vqa", "--data-root", str(root), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "iu-xray-vqa-cares.v1.json").is_file()
    assert main(["data", "manifest", "--task", "vqa-rad", "--data-root", str(root)]) == 2


def test_missing_root_names_layout(monkeypatch) -> None:
    from medbench.registry import TASKS

    monkeypatch.delenv("MEDBENCH_DATA", raising=False)
    for name in ("slake", "vqa-rad", "pathvqa", "iu-xray-vqa", "omnimedvqa", "iu-xray-report", "mimic-cxr-report"):
        task = TASKS.get(name)()
        with pytest.raises(DataRootError, match="phantom-vqa") as info:
            task.load(task.eval_split)
        assert "Expected layout" in str(info.value) and task.expected_layout.splitlines()[0] in str(info.value)


def test_unscorable_rule_in_every_derived_loader(tmp_path: Path) -> None:
    """One rule: a row without gold stays in its split (``rows``) but is never loaded (``loaded``)."""
    from fixtures_datasets import write_mimic, write_omnimedvqa

    from medbench.tasks._common import UNSCORABLE_REASONS, is_unscorable
    from medbench.tasks.mimic_cxr import MIMICCXRReport
    from medbench.tasks.omnimedvqa import OmniMedVQA

    for task, unscorable in ((IUXrayVQA(write_cares_iuxray(tmp_path / "iu")), 2),
                             (OmniMedVQA(write_omnimedvqa(tmp_path / "omni")), 1),
                             (MIMICCXRReport(write_mimic(tmp_path / "mimic")), 4)):
        loaded = {split: len(task.load(split)) for split in task.splits}
        assert sum(c["unscorable"] for c in task.count_checks.values()) == unscorable, task.name
        assert sum(1 for s in task.skipped if is_unscorable(s.reason)) == unscorable
        for split, c in task.count_checks.items():
            assert c["rows"] == c["loaded"] + c["skipped"] and c["loaded"] == loaded[split]
        drawn = task.assignment()
        for split in task.splits:
            assert task.count_checks[split]["rows"] == sum(v == split for v in drawn.values())
    assert is_unscorable("short-target: 3 tokens") and not is_unscorable("image-missing: x.png")
    assert "mc-no-gold" in UNSCORABLE_REASONS


def test_unscorable_rule_in_official_loaders(tmp_path: Path) -> None:
    from fixtures_datasets import write_r2gen

    from medbench.tasks.iu_xray import IUXrayReport

    root = write_r2gen(tmp_path)
    path = root / "iu_xray" / "annotation.json"
    ann = json.loads(path.read_text())
    ann["test"][1]["report"] = " "
    path.write_text(json.dumps(ann))
    task = IUXrayReport(root)
    assert len(task.load("test")) == 1
    assert task.count_checks["test"] | {"table6": None} == {
        "rows": 2, "loaded": 1, "skipped": 1, "unscorable": 1, "table6": None, "match": False, "derived": False}


def test_image_root_refused_by_tasks_without_one(tmp_path: Path, capsys) -> None:
    root = write_vqa_rad(tmp_path / "rad")
    assert main(["data", "check", "--task", "vqa-rad", "--data-root", str(root), "--image-root", str(root)]) == 1
    assert "--image-root is for tasks whose images live in another folder" in capsys.readouterr().err
    from medbench.runner import RunConfig, open_run_task

    with pytest.raises(DataRootError, match="reads its images from its data root"):
        open_run_task(RunConfig(method="greedy", task="vqa-rad", data_root=str(root), image_root=str(root)))
    task = open_run_task(RunConfig(method="greedy", task="iu-xray-vqa", data_root=str(root), image_root=str(root)))
    assert task.image_root == root
