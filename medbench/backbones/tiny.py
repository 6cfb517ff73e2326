"""The embedded backbone ``tiny-med-llava``: a real ``LlavaForConditionalGeneration``.

CLIP vision tower (128 px, patch 16 → an 8×8 visual-token grid, 4 layers) + Llama text model (4 layers, hidden 256,
grouped-query attention), a byte-level BPE tokenizer trained offline on phantom text, and the
``tiny`` prompt template. ``medbench pretrain`` trains it from scratch; the checkpoint ships in
``medbench/assets/tiny-med-llava``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medbench.backbones.base import Backbone
from medbench.backbones.templates import TINY
from medbench.paths import ASSETS

TINY_DIR = ASSETS / "tiny-med-llava"
#: The versions of the checkpoint, as recorded in its ``pretrain.json`` (``model_version``; absent: 1).
MODEL_VERSIONS = {
    1: "trained end to end on single-turn phantom questions and reports (`medbench pretrain --stage lm`)",
    2: "a vision tower trained densely on the phantom v3 masks (`--stage vision`), then projector and language "
       "model on it (`--stage language`)",
}
CURRENT_VERSION = 2
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
IMAGE_SIZE = 128
PATCH_SIZE = 16


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Any:
    """Byte-level BPE trained offline on ``texts``; prepends ``<s>`` to every sequence."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )


def checkpoint_version(path: str | os.PathLike) -> int:
    """The tiny-med-llava version of a checkpoint directory (its ``pretrain.json``'s ``model_version``;
    a checkpoint without one is a v1 checkpoint)."""
    import json

    record = Path(path) / "pretrain.json"
    if not record.is_file():
        return 1
    try:
        version = json.loads(record.read_text()).get("model_version", 1)
    except (OSError, ValueError, AttributeError) as exc:
        from medbench.errors import ConfigError

        raise ConfigError(f"{record} is not a readable pretrain record: {exc}") from None
    return int(version)


def require_version(path: str | os.PathLike, expected: int, purpose: str) -> None:
    """Refuse a checkpoint of another version than ``expected``, naming both."""
    found = checkpoint_version(path)
    if found != expected:
        from medbench.errors import ConfigError

        raise ConfigError(f"{path} holds a tiny-med-llava v{found} checkpoint ({MODEL_VERSIONS.get(found, 'unknown')}); "
                          f"{purpose} expects v{expected} ({MODEL_VERSIONS[expected]})")


def build_processor(tokenizer: Any) -> Any:
    from transformers import LlavaImageProcessor, LlavaProcessor

    image_processor = LlavaImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_config(tokenizer: Any) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build_random(tokenizer: Any, seed: int = 0) -> tuple[Any, Any]:
    """A freshly initialised tiny model and its processor."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(tokenizer))
    return model, build_processor(tokenizer)


class TinyMedLlava(Backbone):
    """``tiny-med-llava`` loaded from the shipped checkpoint (or a directory given by the user)."""

    name = "tiny-med-llava"
    default_tuning_lr = 2e-3

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str = "cpu") -> TinyMedLlava:
        import torch
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        from medbench.hashing import sha256_file

        path = Path(path) if path else TINY_DIR
        weights = path / "model.safetensors"
        if not weights.exists():
            raise FileNotFoundError(
                f"no tiny-med-llava checkpoint at {path}; run `medbench pretrain` to build it"
            )
        model = LlavaForConditionalGeneration.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
        )
        processor = LlavaProcessor.from_pretrained(path, local_files_only=True)
        processor.tokenizer.padding_side = "left"
        model.to(device).eval()
        return cls(model, processor, TINY, checkpoint_id=f"tiny-med-llava:{sha256_file(weights)[:16]}")
