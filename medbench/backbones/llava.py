"""Real LLaVA-family backbones: ``LlavaForConditionalGeneration`` checkpoints from local folders.

One adapter per model family, all behind :class:`~medbench.backbones.base.Backbone`:

- :class:`LlavaMedV1` — LLaVA-Med v1 (delta applied, converted): LLaMA-7B, CLIP ViT-L/14 224,
  single-linear projector, shortest-edge 224 + centre crop, 256 ``<im_patch>`` tokens between
  ``<im_start>``/``<im_end>``, A3Tune's v1 prompt by default.
- :class:`LlavaMedV15` — LLaVA-Med v1.5 (``medbench convert`` output or a ``-hf`` conversion):
  Mistral-7B, CLIP-336, pad to square (grey 114 for mode ``L``), 576 ``<image>`` tokens,
  ``mistral_instruct``.
- :class:`HuatuoGPTVision` — HuatuoGPT-Vision-7B (converted or ``-hf``): Qwen2-7B, CLIP-336,
  RGB pad, no BOS, pad token = EOS ``<|endoftext|>``.
- :class:`Llava15` — any other LLaVA-1.5-style checkpoint (LLaMA/Vicuna, CLIP-336, pad, ``vicuna_v1``).

medbench builds the processor itself (PIL CLIP processor, patch size 14, one extra CLS token,
the template's chat template) and never trusts a checkpoint's processor files, which are often
incomplete. Prompts are tokenized in chunks around the image placeholder, as the reference does.
Weights load from safetensors only, offline, without remote code: bf16 on GPU, fp32 on CPU,
optionally ``device_map="auto"``. Token ids that only mark images or padding are suppressed in
the logits so generation can never emit them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from medbench import geometry as geo
from medbench.backbones.base import Backbone
from medbench.backbones.local_models import MedbenchModelError, resolve
from medbench.backbones.templates import (
    A3TUNE_V1,
    HUATUOGPT,
    MISTRAL_INSTRUCT,
    VICUNA_V1,
    PromptTemplate,
    get_template,
)

CONVERSION_RECORD = "medbench_conversion.json"
SUPPRESSED_LOGIT = -1.0e4
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ORIGINAL_MODEL_TYPES = {"llava_mistral": "llava-med-v1.5", "llava_qwen2": "huatuogpt-vision-7b"}


class LlavaBackbone(Backbone):
    """A local ``LlavaForConditionalGeneration`` folder with medbench's own processor and template."""

    name: ClassVar[str] = "llava-hf"
    default_template: ClassVar[PromptTemplate] = VICUNA_V1
    #: The A³TUNE reference code's trainer where the paper is silent.
    tuning_lr_schedule: ClassVar[str] = "cosine"
    tuning_effective_batch: ClassVar[int] = 32
    tuning_expert_dropout: ClassVar[float] = 0.05
    preprocessing: ClassVar[str] = geo.PAD
    fill_l: ClassVar[int | None] = None
    image_token_text: ClassVar[str] = "<image>"
    bracket_tokens: ClassVar[tuple[str, str] | None] = None
    text_model_type: ClassVar[str] = "llama"
    pad_is_eos: ClassVar[bool] = False
    image_backend: ClassVar[str] = "pil"

    def __init__(self, model: Any, processor: Any, template: PromptTemplate, *, checkpoint_id: str,
                 suppressed_token_ids: Sequence[int] = ()):
        super().__init__(model, processor, template, checkpoint_id=checkpoint_id)
        self.suppressed_token_ids = sorted({int(i) for i in suppressed_token_ids})
        if self.suppressed_token_ids:
            suppress_logits(model, self.suppressed_token_ids)

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str = "cpu", *, device_map: str | None = None,
             template: str | PromptTemplate | None = None) -> LlavaBackbone:
        """Load from ``path`` (default: this model's configured local path; see ``local_models``)."""
        from transformers import LlavaForConditionalGeneration

        folder = Path(path) if path is not None else resolve(cls.name)
        check_hf_layout(folder, cls.name)
        config = load_config(folder)
        tokenizer = load_tokenizer(folder)
        tpl = get_template(template) if isinstance(template, str) else (template or cls.default_template)
        cls.fix_tokenizer(tokenizer, config)
        processor = cls.build_processor(tokenizer, config, tpl)
        on_gpu = str(device).startswith("cuda") or (device_map is not None and torch.cuda.is_available())
        model = LlavaForConditionalGeneration.from_pretrained(
            folder, config=config, dtype=torch.bfloat16 if on_gpu else torch.float32, local_files_only=True,
            use_safetensors=True, device_map=device_map,
        )
        if device_map is None:
            model.to(device)
        model.eval()
        record = read_conversion_record(folder)
        backbone = cls(model, processor, tpl, checkpoint_id=f"{cls.name}:{weights_fingerprint(folder)[:16]}",
                       suppressed_token_ids=cls.suppressed_ids(tokenizer, config, record))
        backbone.check_consistency()
        return backbone

    @classmethod
    def fix_tokenizer(cls, tokenizer: Any, config: Any) -> None:
        """Left padding and a usable pad token (EOS where the family pads with EOS or has none)."""
        tokenizer.padding_side = "left"
        pad = tokenizer.pad_token_id
        if cls.pad_is_eos or pad is None or pad >= len(tokenizer):
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(cls.eos_text()))
        config.text_config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def eos_text(cls) -> str:
        return cls.default_template.eos

    @classmethod
    def build_processor(cls, tokenizer: Any, config: Any, template: PromptTemplate) -> Any:
        """PIL CLIP processor at the tower's size, patch size and CLS count fixed, template attached."""
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        size = int(config.vision_config.image_size)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=list(geo.CLIP_MEAN), image_std=list(CLIP_STD),
        )
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=int(config.vision_config.patch_size),
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            image_token=cls.image_token_text, chat_template=template.chat_template(cls.image_token_text),
        )
        processor.image_token = cls.image_token_text
        processor.image_token_id = int(tokenizer.convert_tokens_to_ids(cls.image_token_text))
        return processor

    @classmethod
    def suppressed_ids(cls, tokenizer: Any, config: Any, record: dict[str, Any] | None) -> list[int]:
        """Ids generation must never produce: image/bracket tokens, added pad, rows without a token."""
        ids = {int(config.image_token_index)}
        for tok in cls.bracket_tokens or ():
            ids.add(int(tokenizer.convert_tokens_to_ids(tok)))
        pad, eos = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids(cls.eos_text())
        if pad is not None and pad != eos:
            ids.add(int(pad))
        ids.update(range(len(tokenizer), int(config.text_config.vocab_size)))
        ids.update(int(i) for i in (record or {}).get("suppressed_token_ids", []))
        return sorted(ids)

    def check_consistency(self) -> None:
        cfg = self.model.config
        image_id = self.image_token_id
        if image_id != int(cfg.image_token_index):
            raise MedbenchModelError(f"{self.checkpoint_id}: the tokenizer's {self.image_token} is id {image_id}, "
                                     f"but config.image_token_index is {cfg.image_token_index}")
        text_type = cfg.text_config.model_type
        if text_type != self.text_model_type:
            raise MedbenchModelError(f"{self.name} expects a {self.text_model_type} language model, found {text_type}")

    # ---- ids and shapes ---------------------------------------------------------------------
    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(self.template.eos))

    @property
    def input_size(self) -> tuple[int, int]:
        return geo.input_size(self.geometry())

    def geometry(self) -> dict[str, Any]:
        size = int(self.model.config.vision_config.image_size)
        if self.preprocessing == geo.CROP:
            return geo.crop_geometry(size, self.grid_size)
        return geo.pad_geometry(size, self.grid_size, fill_l=self.fill_l)

    # ---- preprocessing ----------------------------------------------------------------------
    def load_image(self, path: str | Path) -> Image.Image:
        """The image as opened (no EXIF transpose); mode ``L`` kept where the model pads it grey.

        16-bit and float images are rescaled to 8 bits by their own range (:mod:`medbench.images`).
        """
        from medbench.images import open_image

        return open_image(path, keep_grey=self.preprocessing == geo.PAD and self.fill_l is not None)

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        record = self.geometry()
        if record["mode"] == geo.PAD:
            images = [geo.pad_image(im, record) for im in images]
        else:
            images = [im.convert("RGB") for im in images]
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def tokenize_prompt(self, text: str) -> list[int]:
        """Chunked tokenization: text around the placeholder tokenized apart, BOS kept once, N image ids."""
        chunks = text.split(self.image_token)
        if len(chunks) != 2:
            raise ValueError(f"prompt must hold exactly one {self.image_token!r}, found {len(chunks) - 1}: {text!r}")
        add = self.template.add_bos
        parts = [list(self.tokenizer(c, add_special_tokens=add)["input_ids"]) for c in chunks]
        ids: list[int] = []
        bos = self.tokenizer.bos_token_id
        if add and bos is not None:
            ids.append(int(bos))
            parts = [p[1:] if p and p[0] == bos else p for p in parts]
        ids += parts[0] + [self.image_token_id] * self.num_image_tokens + parts[1]
        self.image_span(ids)
        return ids

    def image_span(self, ids: Sequence[int]) -> tuple[int, int]:
        """``[start, end)`` of the one contiguous run of G² image ids (between the brackets for v1)."""
        image_id = self.image_token_id
        pos = [i for i, t in enumerate(ids) if int(t) == image_id]
        n = self.num_image_tokens
        if len(pos) != n or pos[-1] - pos[0] + 1 != n:
            raise ValueError(f"expected one contiguous run of {n} image tokens, found {len(pos)} at "
                             f"{pos[:1]}…{pos[-1:]}")
        start, end = pos[0], pos[-1] + 1
        if self.bracket_tokens:
            left, right = (self.tokenizer.convert_tokens_to_ids(t) for t in self.bracket_tokens)
            if start == 0 or end >= len(ids) or int(ids[start - 1]) != left or int(ids[end]) != right:
                raise ValueError(f"the image run must sit between {self.bracket_tokens[0]} and {self.bracket_tokens[1]}")
        return start, end

    def postprocess(self, text: str) -> str:
        """A decoded answer cut at the template's stop text."""
        return self.template.clean(text)


class LlavaMedV1(LlavaBackbone):
    """LLaVA-Med v1 after delta application and ``medbench convert llava-med-v1``."""

    name = "llava-med-v1"
    default_template = A3TUNE_V1
    controlmllm_lr = 4.0
    a3tune_wiring = "v1"
    preprocessing = geo.CROP
    image_token_text = "<im_patch>"
    bracket_tokens = ("<im_start>", "<im_end>")


class LlavaMedV15(LlavaBackbone):
    """LLaVA-Med v1.5 (Mistral-7B) in ``LlavaForConditionalGeneration`` format."""

    name = "llava-med-v1.5"
    default_template = MISTRAL_INSTRUCT
    fill_l = geo.CLIP_MEAN_L
    text_model_type = "mistral"


class HuatuoGPTVision(LlavaBackbone):
    """HuatuoGPT-Vision-7B (Qwen2-7B) in ``LlavaForConditionalGeneration`` format."""

    name = "huatuogpt-vision-7b"
    default_template = HUATUOGPT
    text_model_type = "qwen2"
    pad_is_eos = True


class Llava15(LlavaBackbone):
    """Any other LLaVA-1.5-style checkpoint (LLaMA/Vicuna language model, CLIP-336, padded images)."""

    name = "llava-hf"


ADAPTERS: dict[str, type[LlavaBackbone]] = {
    c.name: c for c in (LlavaMedV1, LlavaMedV15, HuatuoGPTVision, Llava15)
}


# ---- helpers ----------------------------------------------------------------------------------
def suppress_logits(model: Any, token_ids: Sequence[int]) -> Any:
    """Set the logits of ``token_ids`` to a large finite negative value via a forward hook on ``lm_head``."""
    ids_cpu = torch.tensor(sorted(token_ids), dtype=torch.long)
    cache: dict[torch.device, torch.Tensor] = {}

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        idx = cache.setdefault(output.device, ids_cpu.to(output.device))
        idx = idx[idx < output.shape[-1]]
        return output.index_fill(-1, idx, SUPPRESSED_LOGIT)

    return model.lm_head.register_forward_hook(hook)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedbenchModelError(f"{path}: cannot read JSON ({exc})") from None


def read_conversion_record(folder: Path) -> dict[str, Any] | None:
    path = folder / CONVERSION_RECORD
    return read_json(path) if path.is_file() else None


def original_kind(config: dict[str, Any]) -> str | None:
    """The ``medbench convert`` kind of an original (non-HF) LLaVA checkpoint config, else ``None``."""
    model_type = config.get("model_type")
    if model_type in ORIGINAL_MODEL_TYPES:
        return ORIGINAL_MODEL_TYPES[model_type]
    if model_type == "llava" and ("mm_vision_tower" in config or "mm_hidden_size" in config):
        return "llava-med-v1"
    return None


def check_hf_layout(folder: Path, name: str) -> None:
    """Raise a clear error unless ``folder`` holds an HF Llava config and safetensors weights."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MedbenchModelError(f"{name}: no config.json in {folder}; expected a LlavaForConditionalGeneration "
                                 "folder (config.json model_type llava, model*.safetensors, tokenizer files)")
    config = read_json(config_path)
    kind = original_kind(config)
    if kind is not None:
        raise MedbenchModelError(f"{folder} holds an original {config.get('model_type')} checkpoint; convert it "
                                 f"first: `medbench convert {kind} {folder} DST`, then use DST")
    if config.get("model_type") != "llava":
        raise MedbenchModelError(f"{folder}: config.json model_type is {config.get('model_type')!r}, "
                                 "expected 'llava' (LlavaForConditionalGeneration)")
    if not any(folder.glob("*.safetensors")):
        raise MedbenchModelError(f"{folder}: no *.safetensors weights; medbench loads weights only from "
                                 "safetensors (convert .bin files with `medbench convert`)")


def load_config(folder: Path) -> Any:
    """The Llava config with known gaps filled (a missing text ``head_dim``)."""
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(folder, local_files_only=True)
    text = config.text_config
    if getattr(text, "head_dim", None) in (None, 0):
        text.head_dim = text.hidden_size // text.num_attention_heads
    return config


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def weights_fingerprint(folder: Path) -> str:
    """A cheap checkpoint identity: the conversion record's output hashes, else config + safetensors headers."""
    from medbench.hashing import sha256_obj

    record = read_conversion_record(folder)
    if record and record.get("output_sha256"):
        return sha256_obj(record["output_sha256"])
    parts: dict[str, Any] = {"config": (folder / "config.json").read_text()}
    for f in sorted(folder.glob("*.safetensors")):
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            parts[f.name] = [f.stat().st_size, fh.read(min(n, 1 << 24)).decode("utf-8", "replace")]
    return sha256_obj(parts)


def adapter_for(folder: str | os.PathLike) -> type[LlavaBackbone] | None:
    """The adapter class for a local folder, by its conversion record or its config; ``None``: not a real LLaVA."""
    folder = Path(folder)
    record = read_conversion_record(folder)
    if record and record.get("adapter") in ADAPTERS:
        return ADAPTERS[record["adapter"]]
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = read_json(config_path)
    if original_kind(config) is not None:
        check_hf_layout(folder, str(folder))
    text = (config.get("text_config") or {}).get("model_type", "llama")
    vision = config.get("vision_config") or {}
    if text == "qwen2":
        return HuatuoGPTVision
    if text == "mistral":
        return LlavaMedV15
    if text == "llama" and vision.get("patch_size") == 14:
        if vision.get("image_size") == 224 and config.get("projector_hidden_act") == "linear":
            return LlavaMedV1
        if vision.get("image_size") == 336:
            return Llava15
    return None
