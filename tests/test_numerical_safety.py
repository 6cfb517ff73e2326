"""Numerical safety of every decoding method: non-finite logits never crash and are counted.

A forward hook on the language-model head (a torch extension point) poisons sample 0's logits;
every registered decoding method must finish the batch, report guarded steps for sample 0, and
return only real token ids.
"""

from __future__ import annotations

import pytest
import torch
from decoding_fixtures import SEEDS, encode, shared_backbone

from medbench.registry import METHODS

DECODERS = sorted(n for n in METHODS.names() if METHODS.entry(n).info["kind"] == "decoding")
ARGS = {"controlmllm": {"steps": "1"}, "opera": {"num_beams": "2"}, "beam": {"num_beams": "2"}}


@pytest.fixture(scope="module")
def setup():
    backbone = shared_backbone()
    samples, images, batch = encode(backbone, 3, roi=True)
    return backbone, samples, images, batch


def poison_row_zero(value: float):
    """Hook: row 0 of every head output, which is sample 0 in every layout the engine uses
    (plain batch, branch-major contrastive rows, sample-major beams)."""

    def hook(module, inputs, out):
        out = out.clone()
        out[0] = value
        return out

    return hook


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", DECODERS)
def test_poisoned_logits_finish_and_are_counted(setup, name, value):
    backbone, samples, images, batch = setup
    method = METHODS.get(name)(**ARGS.get(name, {}))
    method.prepare(backbone, samples, images)
    handle = backbone.model.lm_head.register_forward_hook(poison_row_zero(value))
    try:
        gen = method.generate(backbone, batch, SEEDS, 4)
    finally:
        handle.remove()
    assert len(gen.tokens) == len(samples)
    assert gen.guards[0] >= 1, gen.guards
    vocab = backbone.model.config.text_config.vocab_size
    assert all(0 <= t < vocab and t != backbone.image_token_id for row in gen.tokens for t in row)


def test_guarded_counts_reach_the_results(tmp_path):
    """The run's counts carry guard_steps / guarded_samples from the prediction rows."""
    import json

    from medbench.runner import RunConfig, run

    res = run(RunConfig(method="greedy", task="phantom-vqa", limit=4, output_dir=str(tmp_path), progress=False))
    assert res["counts"]["guard_steps"] == 0 and res["counts"]["guarded_samples"] == 0
    path = next(tmp_path.rglob("predictions.jsonl"))
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row["guards"] = 3
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    from medbench.registry import TASKS
    from medbench.runner import select_samples
    from medbench.scoring import score_run

    task = TASKS.get("phantom-vqa")()
    rescored = score_run(path.parent, samples=select_samples(task, 4), task=task)
    assert rescored["counts"]["guard_steps"] == 3 and rescored["counts"]["guarded_samples"] == 1
    assert all(v is None or v == v for v in rescored["metrics"].values())  # no NaN metric


def poison_rows_from(start: int):
    """Hook: NaN from row ``start`` on (the contrast branch's rows in the branch-major layout)."""

    def hook(module, inputs, out):
        out = out.clone()
        out[start:] = float("nan")
        return out

    return hook


@pytest.mark.parametrize("name", ["vcd", "m3id", "pai"])
def test_guarded_steps_keep_the_plausibility_constraint(setup, name):
    """A NaN contrast branch: every guarded step samples from V_head(β) of the expert logits only.

    With β=0.9 V_head holds little more than the arg-max, while at temperature 20 a draw from the
    whole vocabulary would almost never land there.
    """
    from decoding_fixtures import recording

    backbone, samples, images, batch = setup
    method = recording(METHODS.get(name))(beta=0.9, selection="sample", temperature=20.0)
    method.prepare(backbone, samples, images)
    n = batch.input_ids.shape[0]
    handle = backbone.model.lm_head.register_forward_hook(poison_rows_from(n))
    try:
        gen = method.generate(backbone, batch, SEEDS, 6)
    finally:
        handle.remove()
    assert all(g == len(row) for g, row in zip(gen.guards, gen.tokens)), (gen.guards, gen.tokens)
    for step, logits in enumerate(method.seen):
        expert = logits[0]
        head = expert >= expert.max(-1, keepdim=True).values + torch.log(torch.tensor(0.9))
        for i, row in enumerate(gen.tokens):
            if step < len(row):
                assert bool(head[i, row[step]]), (name, step, i)


def test_fallback_is_the_main_logits_under_the_cutoff():
    logits = torch.tensor([[2.0, 1.9375, 0.0, -1.0]])
    vcd = METHODS.get("vcd")(beta=0.9)
    out = vcd.fallback([logits, torch.full_like(logits, float("nan"))], 0)
    assert out.tolist() == [[2.0, 1.9375, float("-inf"), float("-inf")]]  # log 0.9 = −0.105: 1.9375 stays
    dola = METHODS.get("dola")(relative_top=0.5)
    assert dola.fallback([logits, logits], 0).tolist() == [[2.0, 1.9375, float("-inf"), float("-inf")]]
    assert METHODS.get("controlmllm")().fallback([logits], 0).tolist() == logits.tolist()  # its β is the EMA
    assert METHODS.get("nucleus")().fallback([logits], 0).tolist() == logits.tolist()
