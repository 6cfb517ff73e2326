"""The language stage of tiny-med-llava v2: conversations, the feature path, the losses, resuming."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from killing import kill_when
from safetensors.torch import load_file

from medbench.pretrain_language import (
    IGNORE,
    Turn,
    answer_token_weights,
    encode_conversation,
    followup_prompt,
    grounding_loss,
    image_positions,
    logits_from_features,
    make_batch,
    step_conversations,
    tower_features,
    weighted_answer_loss,
)
from medbench.types import AnswerType, Sample

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _turns() -> list[Turn]:
    cells = np.zeros(64, dtype=bool)
    cells[[9, 10]] = True
    return [Turn("is there a liver in this image?", "yes", "closed", cells),
            Turn("what modality is this?", "ct", "open", None),
            Turn("what modality is this?", "axial ct of the abdomen", "report", None)]


def test_first_turn_is_the_evaluation_prompt_and_labels_cover_answers_only(random_backbone):
    b = random_backbone
    e = encode_conversation(b, 3, _turns())
    first = Sample(id="", image_path="", question=_turns()[0].prompt, answer="yes", answer_type=AnswerType.CLOSED,
                   split="test")
    prompt = b.tokenize_prompt(b.prompt_text(first))
    assert e.ids[:len(prompt)] == prompt and e.reads[0] == len(prompt) - 1
    assert sum(i == b.image_token_id for i in e.ids) == b.num_image_tokens  # later turns carry no image
    assert "<image>" not in followup_prompt(b, "q?") and followup_prompt(b, "q?").endswith("q? ASSISTANT:")
    for k, turn in enumerate(_turns()):
        answer = b.encode_answer(turn.answer)
        tokens = [i for i, a in zip(e.labels, e.answer_of) if a == k]
        assert tokens == answer
        assert e.ids[e.reads[k] + 1:e.reads[k] + 1 + len(answer)] == answer
    assert all((lab == IGNORE) == (a < 0) for lab, a in zip(e.labels, e.answer_of))
    assert e.cells[0] is not None and e.cells[1] is None


def test_batch_weights_each_answer_equally(random_backbone):
    b = random_backbone
    encoded = [encode_conversation(b, 0, _turns()), encode_conversation(b, 1, _turns()[:1])]
    batch = make_batch(b, encoded)
    assert batch.input_ids.shape[0] == 2 and batch.reads.shape == (2, 3)
    assert math.isclose(float(batch.answer_weight.sum()), 1.0, rel_tol=1e-6)
    # four answers in the batch: each answer's tokens sum to 1/4, whatever its length, half of it on
    # the first token (where "yes"/"no" is decided)
    for row, e in enumerate(encoded):
        for k in range(len(e.reads)):
            positions = [i for i, a in enumerate(e.answer_of) if a == k]
            assert math.isclose(float(batch.answer_weight[row, positions].sum()), 0.25, rel_tol=1e-6)
            if len(positions) > 1:
                assert math.isclose(float(batch.answer_weight[row, positions[0]]), 0.125, rel_tol=1e-6)
    assert answer_token_weights(1, 0.5) == [1.0] and answer_token_weights(3, 0.5) == [0.5, 0.25, 0.25]
    assert answer_token_weights(2, 1.0) == [1.0, 0.0] and answer_token_weights(4, None) == [0.25] * 4
    assert batch.read_cells[0, 0].sum() == 2 and not batch.read_cells[0, 1:].any()
    assert not batch.read_cells[1].any() or batch.read_cells[1, 0].sum() == 2
    assert batch.reads[1, 1] == batch.reads[1, 0]  # padding repeats the first read


def test_weighted_answer_loss_by_hand():
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0), 0.0])  # predicts token at position 2: p(1) = 3/5
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2]])
    weight = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    from medbench.pretrain_language import LanguageBatch

    batch = LanguageBatch(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long), labels, weight,
                          torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                          torch.zeros(1, 1, 64, dtype=torch.bool))
    expected = 0.5 * -math.log(3 / 5) + 0.5 * -math.log(1 / 3)
    assert math.isclose(float(weighted_answer_loss(logits, batch)), expected, rel_tol=1e-6)


def test_grounding_loss_by_hand():
    probs = torch.zeros(2, 2, 4)
    probs[0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    probs[0, 1] = torch.tensor([0.25, 0.25, 0.25, 0.25])
    probs[1, 0] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    cells = torch.zeros(2, 2, 4, dtype=torch.bool)
    cells[0, 0, [2, 3]] = True  # mass 0.7
    cells[1, 0, 0] = True  # mass 0.7 ... and row (0, 1) / (1, 1) are not grounded
    cells[1, 0, 1] = True  # mass 0.8
    from medbench.pretrain_language import LanguageBatch

    batch = LanguageBatch(*(torch.zeros(1),) * 6, cells)
    expected = -(math.log(0.7 + 1e-6) + math.log(0.8 + 1e-6)) / 2
    assert math.isclose(float(grounding_loss(probs, batch)), expected, rel_tol=1e-6)
    assert float(grounding_loss(probs, LanguageBatch(*(torch.zeros(1),) * 6, torch.zeros_like(cells)))) == 0.0


def test_feature_path_equals_the_full_model(random_backbone):
    from PIL import Image

    from medbench.tasks.phantom import v3

    b = random_backbone
    images = [v3.render(0, "pretrain", i, 2).image for i in range(2)]
    features = tower_features(b.model, b, images)
    assert features.shape == (2, b.num_image_tokens, b.model.config.vision_config.hidden_size)
    batch = make_batch(b, [encode_conversation(b, 1, _turns()), encode_conversation(b, 0, _turns()[1:])])
    assert image_positions(batch.input_ids, b.image_token_id, b.num_image_tokens).shape == (2, 64)
    with torch.no_grad():
        ours = logits_from_features(b.model, b.image_token_id, batch.input_ids, batch.attention_mask,
                                    features[batch.image_rows])
        pixels = b.pixel_values([Image.fromarray(images[i]) for i in batch.image_rows.tolist()])
        positions = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
        full = b.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=pixels,
                       position_ids=positions).logits
    valid = batch.attention_mask.bool()
    assert torch.allclose(ours[valid], full[valid], atol=1e-5)
    with pytest.raises(ValueError, match="exactly 64 image tokens"):
        image_positions(batch.input_ids[:, 5:], b.image_token_id, b.num_image_tokens)


def test_step_conversations_cycle_seeded_epochs():
    seen = [k for s in range(5) for _, k in step_conversations(s, 4, 10, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]
    assert step_conversations(2, 4, 10, seed=3) == step_conversations(2, 4, 10, seed=3)
    assert [k for _, k in step_conversations(0, 4, 10, seed=4)] != seen[:4]


def test_language_stage_cli_needs_a_starting_checkpoint(capsys):
    from medbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--stage", "language", "--output", "o"])
    assert exc.value.code == 2 and "--init-from" in capsys.readouterr().err
    for bad in ("0", "1.5", "half"):
        with pytest.raises(SystemExit) as exc:
            main(["pretrain", "--stage", "language", "--output", "o", "--init-from", "i", "--first-token-weight", bad])
        assert exc.value.code == 2 and "--first-token-weight" in capsys.readouterr().err


def test_checkpoint_versions_are_checked_and_named(random_backbone, tmp_path):
    from medbench.backbones.tiny import checkpoint_version
    from medbench.errors import ConfigError
    from medbench.pretrain import PretrainConfig, pretrain
    from medbench.pretrain_language import LanguagePretrainConfig, pretrain_language

    v1 = tmp_path / "v1"
    random_backbone.model.save_pretrained(v1)
    random_backbone.processor.save_pretrained(v1)
    assert checkpoint_version(v1) == 1  # no pretrain.json: a v1 checkpoint
    (v1 / "pretrain.json").write_text(json.dumps({"config": {"steps": 800}}))
    assert checkpoint_version(v1) == 1
    with pytest.raises(ConfigError, match=r"v1 checkpoint .*the language stage .*expects v2"):
        pretrain_language(tmp_path / "out", LanguagePretrainConfig(init_from=str(v1)), progress=False)
    assert not (tmp_path / "out").exists()
    (v1 / "pretrain.json").write_text(json.dumps({"model_version": 2}))
    assert checkpoint_version(v1) == 2
    with pytest.raises(ConfigError, match=r"v2 checkpoint; the lm stage is the v1 recipe"):
        pretrain(tmp_path / "out", PretrainConfig(init_from=str(v1)), progress=False)
    (v1 / "pretrain.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable pretrain record"):
        checkpoint_version(v1)


# ---- the stage end to end: trains projector + LM only, resumes bitwise after SIGKILL ---------
def _cmd(start: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "medbench.cli", "-q", "pretrain", "--stage", "language", "--init-from", str(start),
            "--output", str(out), "--steps", "4", "--batch-size", "2", "--images", "6", "--heldout-images", "4",
            "--checkpoint-every", "1"]


def _saved(out: Path, step: int) -> bool:
    return (out / "state" / f"step-{step:08d}" / "meta.json").exists()


@pytest.mark.slow
def test_language_stage_trains_projector_and_lm_and_resumes_bitwise(random_backbone, tmp_path):
    start = tmp_path / "start"
    random_backbone.model.save_pretrained(start)
    random_backbone.processor.save_pretrained(start)
    (start / "pretrain.json").write_text(json.dumps({"stage": "vision", "model_version": 2}))
    env = ENV
    reference = tmp_path / "reference"
    done = subprocess.run(_cmd(start, reference), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((reference / "pretrain.json").read_text())
    assert record["stage"] == "language" and record["config"]["steps"] == 4 and record["model_version"] == 2
    assert record["continued_from"]["stage"] == "vision"
    assert record["heldout"]["steps"] == [0, 1, 2, 3, 4] and record["heldout"]["split"] == "train"
    assert all(0.0 <= a <= 1.0 for a in record["heldout"]["closed_accuracy"])
    assert set(record["curves"]) == {"loss", "answer", "grounding"} and record["final_losses"]["grounding"] > 0
    assert not (reference / "state").exists()
    before, after = load_file(str(start / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("projector" in k for k in changed) and any("language_model" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)
    config = json.loads((reference / "config.json").read_text())
    assert config["text_config"].get("_attn_implementation") in (None, "sdpa")

    resumed = tmp_path / "resumed"
    assert kill_when(_cmd(start, resumed), lambda: _saved(resumed, 2), env)
    assert not (resumed / "pretrain.json").exists()
    done = subprocess.run(_cmd(start, resumed), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    again = load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(after[k], again[k]) for k in after)
    record_again = json.loads((resumed / "pretrain.json").read_text())
    assert record_again["curves"] == record["curves"] and record_again["resumed_at_step"] >= 2
    assert record_again["heldout"] == record["heldout"]



@pytest.mark.slow
def test_lm_stage_on_a_frozen_v2_tower_stays_v2(random_backbone, tmp_path):
    """The recipe's second command (v1 lm stage with --freeze-vision on the dense tower) keeps v2, so
    the language stage accepts its output."""
    from medbench.backbones.tiny import checkpoint_version
    from medbench.pretrain import PretrainConfig, pretrain

    start = tmp_path / "vision"
    random_backbone.model.save_pretrained(start)
    random_backbone.processor.save_pretrained(start)
    (start / "pretrain.json").write_text(json.dumps({"stage": "vision", "model_version": 2}))
    out = tmp_path / "aligned"
    record = pretrain(out, PretrainConfig(steps=1, batch_size=2, init_from=str(start), freeze_vision=True,
                                          checkpoint_every=0), progress=False)
    assert record["stage"] == "lm" and record["model_version"] == 2 and checkpoint_version(out) == 2
