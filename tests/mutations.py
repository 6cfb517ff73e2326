"""One-line mutations of the numbers medbench reports, each with the test file meant to catch it.

Not collected by pytest and not run by CI: a developer runs it by hand after changing a seam.

    python tests/mutations.py --list                     # the mutations
    python tests/mutations.py                            # apply each one, run its test file
    python tests/mutations.py vcd-noise-swap pai-cfg-sign

Every run works in a temporary copy of the working tree (tracked files plus untracked files git
does not ignore), so the checkout is never modified. The copy is imported ahead of the installed
package through ``PYTHONPATH`` (``medbench/methods`` and ``medbench/tasks`` are linked to
``methods/`` and ``tasks/`` in the copy, as the package layout maps them). The unmutated copy
first runs the selected test files once: a file that already fails makes its mutations
inconclusive rather than "killed". A mutation is killed when its test file fails with it; a
mutation whose ``old`` text no longer occurs exactly once in its file is reported as stale
(update the entry). Exit status: 0 when every selected mutation is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file to mutate, relative to the repository root
    old: str  # text that must occur exactly once in ``path``
    new: str
    test: str  # the test file meant to catch it
    why: str


MUTATIONS = [
    Mutation("vcd-noise-swap", "methods/vcd.py",
             "noised = alpha_bar**0.5 * pixel_values.float() + (1 - alpha_bar) ** 0.5 * noise",
             "noised = (1 - alpha_bar) ** 0.5 * pixel_values.float() + alpha_bar**0.5 * noise",
             "tests/methods/test_decoding_contrastive.py", "VCD's √ᾱ and √(1−ᾱ) swapped"),
    Mutation("avisc-query-row", "methods/avisc.py",
             "query_positions=torch.full((batch.input_ids.shape[0], 1), width - 1,",
             "query_positions=torch.full((batch.input_ids.shape[0], 1), width - 2,",
             "tests/methods/test_decoding_contrastive.py", "AVISC's blind-token query row off by one"),
    Mutation("pai-cfg-sign", "methods/pai.py",
             "gamma * c - (gamma - 1) * F.log_softmax(logits[1], -1)",
             "gamma * c + (gamma - 1) * F.log_softmax(logits[1], -1)",
             "tests/methods/test_decoding_contrastive.py", "PAI's CFG combine with + instead of −"),
    Mutation("bootstrap-tail", "medbench/metrics/bootstrap.py",
             "tail = 100.0 * (1.0 - level) / 2.0",
             "tail = 100.0 * (1.0 - level)",
             "tests/metrics/test_bootstrap.py", "a '95 %' CI that is really 90 %"),
    Mutation("rouge-ci-unresampled", "medbench/metrics/report.py",
             'stats["rouge_l"].append(float(rouge_each[idx].mean()))',
             'stats["rouge_l"].append(float(rouge_each.mean()))',
             "tests/metrics/test_bootstrap.py", "the ROUGE-L CI built from the un-resampled mean"),
    Mutation("table-json-ci-scale", "medbench/tables.py",
             '"ci": None if ci is None else [round(ci[0] * mult, dec), round(ci[1] * mult, dec)],',
             '"ci": None if ci is None else [round(ci[0], dec), round(ci[1], dec)],',
             "tests/test_tables.py", "JSON table CIs not scaled ×100"),
    Mutation("counts-open-closed-swap", "medbench/scoring.py",
             "counts[key] = res.counts[key]",
             'counts[key] = res.counts["closed" if key == "open" else "open"]',
             "tests/test_scoring_rows.py", "open/closed counts swapped in results.json"),
    Mutation("latest-rows-first", "medbench/scoring.py",
             'if prev is None or not row.get("error") or prev.get("error"):',
             "if prev is None:",
             "tests/test_scoring_rows.py", "latest_rows keeps the first row: an error beats a later success"),
    Mutation("attention-grid-transposed", "medbench/attention_grid.py",
             "return grid.reshape(g, g)",
             "return grid.reshape(g, g).T",
             "tests/test_attention_orientation.py", "the attention grid transposed before Coverage/Intensity"),
    Mutation("mc-any-option", "medbench/metrics/mc.py",
             "return pred_idx is not None and pred_idx == label_idx",
             "return pred_idx is not None",
             "tests/metrics/test_metrics_mc.py", "any prediction that maps to some option counts as correct"),
    Mutation("mc-tie-last", "medbench/metrics/mc.py",
             "if ratio > best_ratio:",
             "if ratio >= best_ratio:",
             "tests/metrics/test_metrics_mc.py", "the last option wins ties (and all-zero ratios pick one)"),
    Mutation("fingerprint-no-seed", "medbench/runner.py",
             '"seed": cfg.seed,\n',
             "\n",
             "tests/test_run_fingerprint.py", "a rerun with another --seed silently resumes"),
    Mutation("finding-f1-jaccard", "tasks/phantom/finding_f1.py",
             "return 2.0 * len(set(reference) & set(prediction)) / (len(reference) + len(prediction))",
             "return len(set(reference) & set(prediction)) / len(set(reference) | set(prediction))",
             "tests/metrics/test_metrics_finding_f1.py", "Finding-F1 replaced by Jaccard"),
    Mutation("resume-skips-error-rows", "medbench/predictions.py",
             'self.done = {r["id"]: r for r in rows if not r.get("error")}',
             'self.done = {r["id"]: r for r in rows}',
             "tests/test_run_failures.py", "a resumed run never retries a failed sample"),
    Mutation("failures-exit-zero", "medbench/runner.py",
             "if failed and not cfg.allow_failures:",
             "if failed and cfg.allow_failures:",
             "tests/test_run_failures.py", "a run with failed samples exits 0 without --allow-failures"),
    Mutation("eval-split-train", "medbench/task.py",
             'eval_split: ClassVar[str] = "test"',
             'eval_split: ClassVar[str] = "train"',
             "tests/tasks/test_tasks_slake.py", "a real-data run scores the train split instead of test"),
]


def working_tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def make_copy(dest: Path) -> None:
    for rel in working_tree_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    for pkg in ("methods", "tasks"):
        link = dest / "medbench" / pkg
        if not link.exists():
            link.symlink_to(Path("..") / pkg, target_is_directory=True)


def run_tests(copy: Path, test: str, timeout: float) -> tuple[bool, str, float]:
    """(passed, summary, seconds): pytest stops at the first failure and the summary names it."""
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1"}
    env.pop("MEDBENCH_CACHE", None)
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", test],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout", time.time() - start
    lines = proc.stdout.strip().splitlines() or [""]
    failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in lines if line.startswith("FAILED ")]
    summary = lines[-1] + "".join(f"; {f}" for f in failed)
    return proc.returncode == 0, summary, time.time() - start


def check_imports_from_copy(copy: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    code = "import medbench.methods.vcd as m, medbench.scoring as s; print(m.__file__); print(s.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in out):
        raise SystemExit(f"the copy is not what Python imports ({out}); is medbench installed non-editable?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test-file run")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:28} {m.path:32} {m.test:38} {m.why}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(unknown)}; see --list")
    selected = [known[n] for n in args.names] if args.names else MUTATIONS
    with tempfile.TemporaryDirectory(prefix="medbench-mutations-") as tmp:
        copy = Path(tmp) / "repo"
        make_copy(copy)
        check_imports_from_copy(copy)
        baseline: dict[str, bool] = {}
        for test in dict.fromkeys(m.test for m in selected):
            ok, tail, secs = run_tests(copy, test, args.timeout)
            baseline[test] = ok
            print(f"baseline {test}: {'passes' if ok else 'FAILS'} ({tail}, {secs:.0f} s)", flush=True)
        killed = 0
        for m in selected:
            path = copy / m.path
            text = path.read_text(encoding="utf-8")
            if text.count(m.old) != 1:
                print(f"STALE     {m.name}: the old text occurs {text.count(m.old)} times in {m.path}", flush=True)
                continue
            if not baseline[m.test]:
                print(f"INCONCL.  {m.name}: {m.test} fails without the mutation", flush=True)
                continue
            path.write_text(text.replace(m.old, m.new), encoding="utf-8")
            try:
                ok, tail, secs = run_tests(copy, m.test, args.timeout)
            finally:
                path.write_text(text, encoding="utf-8")
            killed += not ok
            print(f"{'killed  ' if not ok else 'SURVIVED'}  {m.name}: {m.test} ({tail}, {secs:.0f} s)", flush=True)
        print(f"{killed} of {len(selected)} mutations killed")
    return 0 if killed == len(selected) else 1


if __name__ == "__main__":
    sys.exit(main())
