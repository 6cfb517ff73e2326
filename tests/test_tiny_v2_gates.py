"""The gates of the shipped tiny-med-llava v2 (what makes the embedded tier able to measure).

(a) a linear probe on the frozen visual tokens decodes image-level lesion presence and per-cell
    lesion occupancy (balanced accuracy ≥ 0.90 on phantom v3 test images);
(b) base greedy on phantom-vqa v3 answers closed questions ≥ 20 points above the majority rate and
    ≥ 5 points above the location-blind probe;
(c) headroom: closed accuracy ≤ 90 % and the attention mass on the RoI (``roi_mass``, which is
    ``roi_lift`` over its maximum) ≤ 0.5, so tuning and decoding methods can still move them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medbench.backbones.tiny import CURRENT_VERSION, TINY_DIR, checkpoint_version

MAX_SHIPPED_BYTES = 30 * 1024 * 1024


def test_shipped_checkpoint_is_v2_and_small() -> None:
    assert checkpoint_version(TINY_DIR) == CURRENT_VERSION == 2
    assert (TINY_DIR / "model.safetensors").stat().st_size <= MAX_SHIPPED_BYTES
    record = json.loads((TINY_DIR / "pretrain.json").read_text())
    stages = []
    while record is not None:
        stages.append(record.get("stage", "lm"))
        record = record.get("continued_from")
    assert stages[0] == "language" and "vision" in stages[1:], stages  # the language stage ran on a dense tower


@pytest.mark.slow
def test_gate_a_visual_tokens_encode_lesions() -> None:
    from medbench.models import load_backbone
    from medbench.vision_probe import ProbeConfig, linear_probe

    result = linear_probe(load_backbone("tiny-med-llava"), ProbeConfig())
    assert result["image_lesion"]["balanced_accuracy"] >= 0.90, result
    assert result["cell_lesion"]["balanced_accuracy"] >= 0.90, result


@pytest.mark.slow
def test_gates_b_and_c_greedy_reads_the_roi_with_headroom(phantom_v3_probes, tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "medbench.cli", "-q", "run", "--method", "greedy", "--task",
                           "phantom-vqa", "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = tmp_path.rglob("results.json")
    metrics = json.loads(results.read_text())["metrics"]
    closed = phantom_v3_probes.closed.overall
    summary = (f"greedy closed {metrics['closed_accuracy']:.3f}, majority {closed.majority:.3f}, "
               f"location-blind {closed.location_blind:.3f}, roi_mass {metrics['roi_mass']:.3f}")
    assert metrics["closed_accuracy"] >= closed.majority + 0.20, summary
    assert metrics["closed_accuracy"] >= closed.location_blind + 0.05, summary
    assert metrics["closed_accuracy"] <= 0.90, summary
    assert metrics["roi_mass"] <= 0.5 and metrics["roi_lift"] > 1.0, summary
