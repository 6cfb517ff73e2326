"""``medbench pretrain --stage language``: teach the language model to read the visual tokens.

The second stage of tiny-med-llava v2, after the dense vision stage (:mod:`medbench.pretrain_vision`).
The vision tower stays frozen, so the features the projector reads (the tower's patch tokens at
``vision_feature_layer``) are computed once for a pool of ``images`` phantom v3 ``pretrain`` images
rendered in memory, and every step trains only the projector and the language model on them.

Each image becomes one multi-turn conversation (LLaVA's instruction-tuning format): its
``questions_per_image`` questions and, for a ``report_fraction`` share of the images, the report
request, in an order drawn afresh for each epoch, so every kind of turn is the first turn (the
prompt :data:`~medbench.backbones.templates.TINY` writes at evaluation) as often as any other. One
conversation shares the 64 image tokens over all its turns, which makes a step about three times
cheaper per answer than single-turn samples. The loss is next-token cross-entropy on the answer
tokens, averaged within each answer and then over answers, so a report counts as one answer and a
"yes" as another.

Plus a **grounding loss** on one attention head (``grounding_layer``, ``grounding_head``): at the
position each question's answer is read from (its last prompt token), ``−log`` of that head's
attention mass on the question's RoI cells (every cell the task's RoI mask touches: a lesion at
an organ's edge lies in a cell the organ covers only in part; questions about the whole image are
not grounded), weighted ``grounding_weight``. Without it the
answer loss alone left closed-question accuracy at the yes/no prior for as long as we could train
on CPU (the v1 recipe for 800 steps, this stage for 100): finding the asked-about cells among 64 is
the hard part to learn, and the mask says where they are, as grounded instruction data (boxes,
referring expressions) does for real Med-LVLMs. One head of the 32 is supervised; the rest stay free,
so the model's attention as a whole (Coverage, ``roi_lift``) keeps room for tuning methods to move.

The stage is deterministic for a seed, thread count and generator source; step checkpoints
(:mod:`medbench.train_state`) under ``OUTPUT/state`` let a killed run resume step for step.
``pretrain.json`` keeps the loss curve, the closed-question accuracy on held-out phantom ``train``
images (never test) at every checkpoint, and the history of the checkpoint it started from.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbench import attention
from medbench.geometry import GRID_RULES

log = logging.getLogger("medbench")

IGNORE = -100
#: Questions whose RoI spans more grid cells than this (whole-image questions) are not grounded.
MAX_GROUNDED_CELLS = 16


@dataclass(frozen=True)
class LanguagePretrainConfig:
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    seed: int = 0
    data_seed: int = 0
    images: int = 4000
    questions_per_image: int = 6
    report_fraction: float = 0.25
    heldout_images: int = 200
    grounding_weight: float = 0.5
    grounding_layer: int = 1
    grounding_head: int = 0
    grounding_rule: str = "any"
    first_token_weight: float | None = 0.5
    init_from: str | None = None
    checkpoint_every: int = 100


@dataclass
class Turn:
    """One question (or the report request) of a conversation; ``cells``: the RoI's token-grid cells
    the grounding loss pulls the grounding head to (``None``: not grounded)."""

    prompt: str
    answer: str
    kind: str
    cells: np.ndarray | None = None


@dataclass
class Conversation:
    image: int
    turns: list[Turn]


@dataclass
class EncodedConversation:
    """Ids, answer labels (``IGNORE`` elsewhere), the answer index of every token (``-1`` elsewhere),
    and per turn the position of its last prompt token (where the answer is read) and its RoI cells."""

    image: int
    ids: list[int]
    labels: list[int]
    answer_of: list[int]
    reads: list[int]
    cells: list[np.ndarray | None]


def roi_cells(mask: np.ndarray, geometry: dict[str, Any], rule: str = "any") -> np.ndarray | None:
    """The grid cells of a question's RoI (:data:`medbench.geometry.GRID_RULES`), or ``None`` when it is
    empty or spans more than :data:`MAX_GROUNDED_CELLS` cells (image-level questions are not grounded)."""
    from medbench.geometry import mask_to_grid

    cells = mask_to_grid(mask, geometry, rule)
    return cells if 0 < cells.sum() <= MAX_GROUNDED_CELLS else None


def conversations(data_seed: int, n: int, questions_per_image: int, report_fraction: float,
                  geometry: dict[str, Any], progress: bool, split: str = "pretrain", rule: str = "any",
                  ) -> tuple[list[np.ndarray], list[Conversation]]:
    """Render the first ``n`` images of ``split`` in memory: pixels and the conversations of those with
    at least one turn (``Conversation.image`` indexes the pixels)."""
    from tqdm.auto import tqdm

    from medbench.console import progress_bars_enabled
    from medbench.tasks.phantom import v3

    images, convs = [], []
    for index in tqdm(range(n), desc=f"render {split} images", unit="img",
                      disable=not (progress and progress_bars_enabled())):
        rendered = v3.render(data_seed, split, index, questions_per_image)
        turns = [Turn(qa.question, qa.answer, qa.answer_type.value, roi_cells(rendered.masks[qa.roi], geometry, rule))
                 for _, qa in rendered.questions]
        if random.Random(f"report:{data_seed}:{index}").random() < report_fraction:
            turns.append(Turn(rendered.report_prompt, rendered.report, "report"))
        images.append(rendered.image)
        if turns:
            convs.append(Conversation(index, turns))
    return images, convs


def tower_features(model: Any, backbone: Any, images: list[np.ndarray], progress: bool = False,
                   chunk: int = 128) -> torch.Tensor:
    """The frozen tower's patch tokens at the projector's layer for every image, ``[N, G*G, D]``."""
    from PIL import Image
    from tqdm.auto import tqdm

    from medbench.console import progress_bars_enabled
    from medbench.pretrain_vision import patch_features

    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), chunk), desc="vision features", unit="chunk",
                          disable=not (progress and progress_bars_enabled())):
            pixels = backbone.pixel_values([Image.fromarray(im) for im in images[start:start + chunk]])
            out.append(patch_features(model, pixels.to(next(model.parameters()).dtype)))
    return torch.cat(out)


def followup_prompt(backbone: Any, question: str) -> str:
    """A later turn's prompt: the template's prompt for ``question`` without the image placeholder."""
    text = backbone.template.render(question, backbone.image_token)
    return text.replace(backbone.image_token + "\n", "").replace(backbone.image_token, "")


def encode_conversation(backbone: Any, image: int, turns: list[Turn]) -> EncodedConversation:
    """One conversation as training ids. The first turn is exactly the evaluation prompt (image +
    question); later turns continue with the template's prompt text without the image, after the
    previous answer's end of sequence."""
    from medbench.types import AnswerType, Sample

    out = EncodedConversation(image, [], [], [], [], [])
    for k, turn in enumerate(turns):
        if k == 0:
            sample = Sample(id="", image_path="", question=turn.prompt, answer=turn.answer,
                            answer_type=AnswerType.OPEN, split="pretrain")
            prompt = backbone.tokenize_prompt(backbone.prompt_text(sample))
        else:
            prompt = backbone.tokenizer(followup_prompt(backbone, turn.prompt), add_special_tokens=False)["input_ids"]
        target = backbone.encode_answer(turn.answer)
        out.reads.append(len(out.ids) + len(prompt) - 1)
        out.cells.append(turn.cells)
        out.ids += prompt + target
        out.labels += [IGNORE] * len(prompt) + target
        out.answer_of += [-1] * len(prompt) + [k] * len(target)
    return out


@dataclass
class LanguageBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    answer_weight: torch.Tensor
    image_rows: torch.Tensor
    reads: torch.Tensor
    """[B, T] position of each turn's last prompt token (padded with the row's first read)."""
    read_cells: torch.Tensor
    """[B, T, G·G] RoI cells of each read (all false: not grounded, or padding)."""


def answer_token_weights(length: int, first: float | None) -> list[float]:
    """One answer's token weights (sum 1): ``first`` on its first token — where a closed answer is
    decided, whether "yes" is one token or two — and the rest spread evenly over the others
    (``None``: every token alike, ``1 / length``)."""
    if first is None:
        return [1.0 / length] * length
    if length == 1:
        return [1.0]
    return [first] + [(1.0 - first) / (length - 1)] * (length - 1)


def make_batch(backbone: Any, encoded: list[EncodedConversation],
               first_token_weight: float | None = 0.5) -> LanguageBatch:
    """Right-padded ids with answer labels and per-token weights: every answer weighs
    ``1 / answers in batch``, split over its tokens by :func:`answer_token_weights`."""
    width = max(len(e.ids) for e in encoded)
    n = len(encoded)
    turns = max(len(e.reads) for e in encoded)
    cells = backbone.num_image_tokens
    ids = torch.full((n, width), backbone.pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    weight = torch.zeros((n, width))
    reads = torch.zeros((n, turns), dtype=torch.long)
    read_cells = torch.zeros((n, turns, cells), dtype=torch.bool)
    answers = sum(len(e.reads) for e in encoded)
    for row, e in enumerate(encoded):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        labels[row, :len(e.labels)] = torch.tensor(e.labels)
        mask[row, :len(e.ids)] = 1
        lengths = np.bincount([a for a in e.answer_of if a >= 0], minlength=len(e.reads))
        per_answer = {a: iter(answer_token_weights(int(n), first_token_weight)) for a, n in enumerate(lengths) if n}
        weight[row, :len(e.ids)] = torch.tensor([next(per_answer[a]) / answers if a >= 0 else 0.0
                                                 for a in e.answer_of])
        reads[row] = e.reads[0]
        reads[row, :len(e.reads)] = torch.tensor(e.reads)
        for t, c in enumerate(e.cells):
            if c is not None:
                read_cells[row, t] = torch.from_numpy(np.asarray(c, dtype=bool))
    return LanguageBatch(ids, mask, labels, weight, torch.tensor([e.image for e in encoded]), reads, read_cells)


def logits_from_features(model: Any, image_token_id: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         features: torch.Tensor) -> torch.Tensor:
    """The model's logits with the image tokens taken from precomputed tower features.

    The same computation as ``model(input_ids=…, pixel_values=…)`` (projector on the patch tokens,
    scattered into the image-token positions of the input embeddings), without the vision tower.
    """
    embeds = model.get_input_embeddings()(input_ids)
    visual = model.model.multi_modal_projector(features).to(embeds.dtype)
    positions = (input_ids == image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(positions, visual.reshape(-1, visual.shape[-1]))
    position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids).logits


def weighted_answer_loss(logits: torch.Tensor, batch: LanguageBatch) -> torch.Tensor:
    """Next-token cross-entropy on answer tokens, each answer's mean weighted equally."""
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE, reduction="none").view(batch.labels[:, 1:].shape)
    return (losses * batch.answer_weight[:, 1:]).sum()


def grounding_loss(head_probs: torch.Tensor, batch: LanguageBatch) -> torch.Tensor:
    """Mean over grounded reads of ``−log`` (the grounding head's attention mass on the RoI cells).

    ``head_probs``: [B, T, G·G] the head's attention probabilities from each read onto the image keys.
    """
    grounded = batch.read_cells.any(-1)
    if not bool(grounded.any()):
        return head_probs.sum() * 0.0
    mass = (head_probs * batch.read_cells).sum(-1)
    return -torch.log(mass[grounded] + 1e-6).mean()


def image_positions(input_ids: torch.Tensor, image_token_id: int, n_image: int) -> torch.Tensor:
    """[B, G·G] positions of the image tokens of each row (found in the ids, never assumed)."""
    hits = (input_ids == image_token_id).nonzero()
    if hits.shape[0] != input_ids.shape[0] * n_image:
        raise ValueError(f"every row must hold exactly {n_image} image tokens")
    return hits[:, 1].view(input_ids.shape[0], n_image)


def closed_accuracy(model: Any, backbone: Any, features: torch.Tensor, convs: list[Conversation],
                    chunk: int = 32) -> float:
    """Share of the closed questions (each asked as a first turn) where the answer tokens of the gold
    answer ("yes" or "no", end of sequence excluded) are likelier than those of the other."""
    options = {a: backbone.encode_answer(a)[:-1] for a in ("yes", "no")}
    questions = [(c.image, t) for c in convs for t in c.turns if t.kind == "closed"]
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(questions), chunk):
            part = questions[start:start + chunk]
            encoded = []
            for image, turn in part:
                for option in ("yes", "no"):
                    e = encode_conversation(backbone, image, [Turn(turn.prompt, option, "closed")])
                    cut = e.reads[0] + 1 + len(options[option])
                    encoded.append(EncodedConversation(image, e.ids[:cut], e.labels[:cut], e.answer_of[:cut],
                                                       e.reads, [None]))
            batch = make_batch(backbone, encoded)
            logits = logits_from_features(model, backbone.image_token_id, batch.input_ids, batch.attention_mask,
                                          features[batch.image_rows])
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            labels = batch.labels[:, 1:]
            picked = torch.gather(logp, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != IGNORE)
            score = picked.sum(1).view(-1, 2)
            for (_, turn), (yes, no) in zip(part, score.tolist()):
                correct += ("yes" if yes > no else "no") == turn.answer
    model.train(was_training)
    return correct / max(1, len(questions))


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n)]


def step_conversations(step: int, batch_size: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, image) pairs of a step: consecutive positions in seeded per-epoch orders of the pool."""
    out = []
    orders: dict[int, list[int]] = {}
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(seed, epoch, n)
        out.append((epoch, orders[epoch][offset]))
    return out


def turn_order(seed: int, epoch: int, image: int, turns: list[Turn]) -> list[Turn]:
    """The conversation's turns in this epoch's order for this image."""
    order = np.random.default_rng([seed, epoch, image, 7]).permutation(len(turns))
    return [turns[int(i)] for i in order]


def _run_key(config: LanguagePretrainConfig, named: dict[str, torch.Tensor]) -> str:
    from medbench.hashing import sha256_file, sha256_obj
    from medbench.vision_targets import generator_source

    settings = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    start = sha256_file(Path(config.init_from) / "model.safetensors") if config.init_from else None
    return sha256_obj({"stage": "language", "config": settings, "start": start, "phantom": generator_source(),
                       "params": {n: list(p.shape) for n, p in named.items()}})


def pretrain_language(output: str | Path, config: LanguagePretrainConfig = LanguagePretrainConfig(),
                      progress: bool = True) -> dict[str, Any]:
    """Train projector and language model on frozen-tower features; save the model and ``pretrain.json``."""
    from tqdm.auto import tqdm

    from medbench import train_state
    from medbench.backbones.base import Backbone
    from medbench.backbones.templates import TINY
    from medbench.console import progress_bars_enabled
    from medbench.pretrain_vision import CURVE_EVERY, curve, save_step, start_model
    from medbench.vision_targets import PHANTOM_VERSION, generator_source

    if not config.init_from:
        raise ValueError("the language stage starts from a checkpoint (the vision stage's output): give init_from")
    if config.grounding_rule not in GRID_RULES or not (
            config.first_token_weight is None or 0.0 < config.first_token_weight <= 1.0):
        raise ValueError(f"grounding_rule must be one of {GRID_RULES} and first_token_weight in (0, 1] or None")
    if config.images < config.batch_size:
        raise ValueError(f"images={config.images} must be at least batch_size={config.batch_size}")
    from medbench.backbones.tiny import CURRENT_VERSION, require_version

    require_version(config.init_from, 2, "the language stage (it trains on the dense v2 vision tower)")
    started = time.time()
    output = Path(output)
    model, processor = start_model(config.init_from, config.seed, 0)
    text = model.config.get_text_config()
    if not (0 <= config.grounding_layer < text.num_hidden_layers and 0 <= config.grounding_head < text.num_attention_heads):
        raise ValueError(f"grounding head ({config.grounding_layer}, {config.grounding_head}) outside the language "
                         f"model's {text.num_hidden_layers} layers × {text.num_attention_heads} heads")
    attention.install(model)
    backbone = Backbone(model, processor, TINY, checkpoint_id="pretrain-language")
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith("model.vision_tower."))
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr, weight_decay=config.weight_decay)
    total = config.steps
    warmup = max(1, int(total * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    key = _run_key(config, named)
    state_dir = output / train_state.STATE_DIR
    found = train_state.latest(state_dir, key)
    train_state.clean_unfinished(state_dir, found)
    curves: dict[str, list[float]] = {"loss": [], "answer": [], "grounding": [],
                                      "heldout_closed_accuracy": [], "heldout_step": []}
    start = 0
    if found is not None:
        state = train_state.load_checkpoint(found, key, named, optimizer, scheduler, rank=0)
        start, curves = state.step, {k: list(v) for k, v in state.extra.items()}
        log.warning("resuming the language stage at step %d of %d", start, total)
    geometry = backbone.geometry()
    images, convs = conversations(config.data_seed, config.images, config.questions_per_image,
                                  config.report_fraction, geometry, progress, rule=config.grounding_rule)
    features = tower_features(model, backbone, images, progress)
    held_images, held = conversations(config.data_seed, config.heldout_images, config.questions_per_image, 0.0,
                                      geometry, False, split="train")
    held_features = tower_features(model, backbone, held_images)
    del images, held_images

    def heldout(step: int) -> None:
        curves["heldout_step"].append(step)
        curves["heldout_closed_accuracy"].append(round(closed_accuracy(model, backbone, held_features, held), 4))

    if start == 0:
        heldout(0)
    model.train()
    bar = tqdm(total=total, initial=start, desc="pretrain language model", unit="step",
               disable=not (progress and progress_bars_enabled()))
    layer, head = config.grounding_layer, config.grounding_head
    for step in range(start, total):
        batch = make_batch(backbone, [
            encode_conversation(backbone, convs[k].image, turn_order(config.seed, epoch, convs[k].image, convs[k].turns))
            for epoch, k in step_conversations(step, config.batch_size, len(convs), config.seed)],
            config.first_token_weight)
        optimizer.zero_grad(set_to_none=True)
        request = attention.CaptureRequest(
            query_positions=batch.reads, per_head=True, layers={layer},
            key_positions=image_positions(batch.input_ids, backbone.image_token_id, backbone.num_image_tokens))
        with attention.capture(request):
            logits = logits_from_features(model, backbone.image_token_id, batch.input_ids, batch.attention_mask,
                                          features[batch.image_rows])
        answer = weighted_answer_loss(logits, batch)
        grounding = grounding_loss(request.captured[layer][:, head], batch)
        loss = answer + config.grounding_weight * grounding
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        optimizer.step()
        scheduler.step()
        for name, value in (("loss", loss), ("answer", answer), ("grounding", grounding)):
            curves[name].append(float(value.detach()))
        done = step + 1
        bar.update(1)
        bar.set_postfix(answer=f"{sum(curves['answer'][-20:]) / len(curves['answer'][-20:]):.3f}",
                        grounding=f"{sum(curves['grounding'][-20:]) / len(curves['grounding'][-20:]):.2f}",
                        closed=f"{curves['heldout_closed_accuracy'][-1]:.3f}")
        if config.checkpoint_every > 0 and (done % config.checkpoint_every == 0 or done == total):
            heldout(done)
            save_step(state_dir, key, done, config.seed, curves, named, optimizer, scheduler)
    bar.close()
    model.eval()
    if curves["heldout_step"][-1] != total:
        heldout(total)
    model.set_attn_implementation({"text_config": "sdpa"})
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    processor.save_pretrained(output)
    record: dict[str, Any] = {
        "stage": "language", "model_version": CURRENT_VERSION, "config": asdict(config), "wall_seconds": round(time.time() - started, 1),
        "resumed_at_step": start, "conversations_seen": total * config.batch_size,
        "answers_in_pool": sum(len(c.turns) for c in convs), "phantom_version": PHANTOM_VERSION,
        "phantom_source": generator_source()[:16], "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_losses": {k: round(sum(curves[k][-50:]) / max(1, len(curves[k][-50:])), 4)
                         for k in ("loss", "answer", "grounding")},
        "grounded_turns_in_pool": sum(t.cells is not None for c in convs for t in c.turns),
        "heldout": {"split": "train", "images": config.heldout_images,
                    "closed_questions": sum(t.kind == "closed" for c in held for t in c.turns),
                    "steps": curves["heldout_step"], "closed_accuracy": curves["heldout_closed_accuracy"]},
        "curve_every": CURVE_EVERY, "curves": {k: curve(curves[k]) for k in ("loss", "answer", "grounding")},
    }
    previous = Path(config.init_from) / "pretrain.json"
    if previous.exists():
        record["continued_from"] = json.loads(previous.read_text())
    (output / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    train_state.remove(state_dir)
    return record
