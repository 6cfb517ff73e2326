"""Random-weight models of the real architectures, for ``medbench bench --shape`` (no weights needed).

``full`` scale reproduces each real model's sizes (7B language model, CLIP ViT-L/14, projector,
vocabulary, visual-token count) so GPU timings match the real checkpoints; ``tiny`` keeps the
architecture classes, vocabulary, image size and token counts but shrinks widths and depths so the
same code path runs on a CPU. Tokenizers are small BPE models trained offline on a built-in text
(LLaMA-style byte-fallback SentencePiece-like, or Qwen2-style byte-level), with the real special
tokens. Shape models suppress EOS so every run decodes the requested number of tokens.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from medbench.backbones.llava import ADAPTERS, LlavaBackbone
from medbench.backbones.templates import TEMPLATES

SHAPES = ("llava-med-v1", "llava-med-v1.5", "huatuogpt-vision-7b")
SCALES = ("full", "tiny")

CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                 patch_size=14, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TEXT: dict[str, tuple[str, dict[str, Any]]] = {
    "llava-med-v1": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32004,
                                   max_position_embeddings=2048, rms_norm_eps=1e-6)),
    "llava-med-v1.5": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32064,
                                       max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6,
                                       sliding_window=None)),
    "huatuogpt-vision-7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                          num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                          max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6)),
}
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
IMAGE_SIZE = {"llava-med-v1": 224, "llava-med-v1.5": 336, "huatuogpt-vision-7b": 336}

_MARKUP = re.compile(r"\{image\}|\{question\}|<im_start>|<im_end>")
CORPUS = [_MARKUP.sub(" ", t.prompt) for t in TEMPLATES.values()] + [
    "Is the liver normal? What organ is shown in this image? Which side is the lesion on?",
    "Is there an abnormality in the lung? What is the modality of this image? Where is the tumor?",
    "yes no left right upper lower small large bright dark ct mri x-ray axial coronal cyst nodule",
    "The heart size and pulmonary vascularity appear within normal limits. No pleural effusion.",
    "Analyze the chest X-ray and generate a concise medical report. kidney spleen brain abdomen chest",
]
LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _bpe(corpus: list[str], vocab_size: int, byte_level: bool, specials: list[str]) -> tuple[dict, list]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=not byte_level))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted({ch for text in corpus for ch in text.replace(" ", "▁")} | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def llama_tokenizer(corpus: list[str] | None = None, vocab_size: int = 32000) -> Any:
    """A LLaMA/Mistral-style tokenizer (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, 256 byte tokens), padded to ``vocab_size``."""
    from transformers import LlamaTokenizer

    learned, merges = _bpe(corpus or CORPUS, 600, False, LLAMA_SPECIALS)
    vocab = {t: i for i, t in enumerate(LLAMA_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(learned, key=learned.get):
        vocab.setdefault(piece, len(vocab))
    filler = 0
    while len(vocab) < vocab_size:
        vocab[f"<unused{filler}>"] = len(vocab)
        filler += 1
    return LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_prefix_space=True, add_bos_token=True)


def qwen_tokenizer(corpus: list[str] | None = None) -> Any:
    """A Qwen2-style byte-level BPE tokenizer with ``<|endoftext|>`` as EOS and pad, no BOS."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _bpe(corpus or CORPUS, 800, True, [])
    for tok in QWEN_SPECIALS:
        vocab.pop(tok, None)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    return tokenizer


def shape_config(name: str, scale: str, tokenizer: Any, image_token_id: int) -> Any:
    """The ``LlavaConfig`` of model ``name`` at ``scale``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, MistralConfig, Qwen2Config

    if name not in SHAPES or scale not in SCALES:
        raise ValueError(f"unknown shape {name!r}/{scale!r}; shapes: {', '.join(SHAPES)}; scales: {', '.join(SCALES)}")
    kind, fields = TEXT[name]
    fields = dict(fields)
    if scale == "tiny":
        ratio = fields["num_attention_heads"] // fields["num_key_value_heads"]
        fields.update(TINY_TEXT, num_key_value_heads=max(1, TINY_TEXT["num_attention_heads"] // min(ratio, 4)))
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[kind]
    eos = tokenizer.convert_tokens_to_ids(ADAPTERS[name].default_template.eos)
    text = cls(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
               tie_word_embeddings=False)
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE[name], **(CLIP_L14 if scale == "full" else CLIP_TINY))
    grid = vision.image_size // vision.patch_size
    return LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_token_id,
                       image_seq_length=grid * grid, vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="linear" if name == "llava-med-v1" else "gelu",
                       tie_word_embeddings=False)


def shape_tokenizer(name: str) -> Any:
    """A small tokenizer carrying the model family's special tokens, image token and pad token."""
    from medbench.backbones.convert import add_special

    if name == "huatuogpt-vision-7b":
        tokenizer = qwen_tokenizer()
        add_special(tokenizer, "<image>")
        tokenizer.pad_token = "<|endoftext|>"
        return tokenizer
    tokenizer = llama_tokenizer()
    tokens = ["<im_patch>", "<im_start>", "<im_end>", "[PAD]"] if name == "llava-med-v1" else ["<image>", "<pad>"]
    for tok in tokens:
        add_special(tokenizer, tok)
    tokenizer.pad_token = tokens[-1]
    return tokenizer


def build_shape(name: str, scale: str = "full", device: str = "cpu", seed: int = 0) -> LlavaBackbone:
    """A random-weight backbone of ``name``'s real architecture: bf16 on GPU, fp32 on CPU."""
    from transformers import LlavaForConditionalGeneration

    adapter = ADAPTERS[name] if name in SHAPES else None
    if adapter is None:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    tokenizer = shape_tokenizer(name)
    tokenizer.padding_side = "left"
    config = shape_config(name, scale, tokenizer, tokenizer.convert_tokens_to_ids(adapter.image_token_text))
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    template = adapter.default_template
    processor = adapter.build_processor(tokenizer, config, template)
    eos = tokenizer.convert_tokens_to_ids(template.eos)
    suppressed = adapter.suppressed_ids(tokenizer, config, None) + [eos]
    return adapter(model, processor, template, checkpoint_id=f"shape:{name}:{scale}", suppressed_token_ids=suppressed)
