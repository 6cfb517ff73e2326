"""Offline conversion of original LLaVA-family checkpoints to ``LlavaForConditionalGeneration`` folders.

A local, deterministic counterpart of transformers' ``convert_llava_weights_to_hf.py`` plus
LLaVA-Med v1's ``apply_delta.py`` (spec: datasets-and-models, sections 4.2–4.4):

- ``llava-med-v1.5`` — Microsoft's ``llava_mistral`` checkpoint (safetensors shards,
  ``tokenizer.model``); the vision tower comes from the local CLIP-336 copy named by
  ``mm_vision_tower`` (as the reference loads it) and is compared with the checkpoint's own copy;
  ``<image>`` and ``<pad>`` are added and the embeddings resized to a multiple of 64 (new rows = mean row).
- ``huatuogpt-vision-7b`` — ``llava_qwen2``; vision weights from the main checkpoint when present,
  else ``<src>/vit/clip_vit_large_patch14_336``; ``<image>`` added at ``len(tokenizer)``.
- ``llava-med-v1`` — base LLaMA-7B + published delta (equal shapes: delta + base; embeddings and
  head: the first base rows summed, extra rows from the delta; projector from the delta); the single
  ``Linear`` projector becomes ``linear_1`` with an identity ``linear_2`` and a linear activation.

Keys must form a bijection with ``LlavaForConditionalGeneration(config)``. The output holds config,
safetensors shards, tokenizer, a processor with patch size, CLS count and chat template, and
``medbench_conversion.json`` (source SHA-256s, vision provenance, checks, added tokens).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from medbench.backbones.llava import ADAPTERS, CONVERSION_RECORD, LlavaBackbone, read_json
from medbench.backbones.local_models import MedbenchModelError, resolve_path_or_name

log = logging.getLogger(__name__)
CONVERTER_VERSION = "1"
KINDS = ("llava-med-v1.5", "huatuogpt-vision-7b", "llava-med-v1")
SHARD_BYTES = 5 * 1024**3
EXPECTED = {
    "llava-med-v1.5": "config.json (model_type llava_mistral), model-0000X-of-0000N.safetensors (+ index), "
    "tokenizer.model or tokenizer.json",
    "huatuogpt-vision-7b": "config.json (model_type llava_qwen2), model*.safetensors, Qwen2 tokenizer files, "
    "vit/clip_vit_large_patch14_336/",
    "llava-med-v1": "delta folder: config.json (model_type llava, vocab_size 32004), pytorch_model*.bin or "
    "*.safetensors, tokenizer files with added_tokens.json; --base: LLaMA-7B in HF format",
}
_NON_TEXT_KEYS = {"architectures", "model_type", "_name_or_path", "transformers_version", "image_aspect_ratio",
                  "image_grid_pinpoints", "tokenizer_padding_side", "tokenizer_model_max_length", "tune_mm_mlp_adapter",
                  "freeze_mm_mlp_adapter", "use_mm_proj", "unfreeze_mm_vision_tower", "torch_dtype", "dtype",
                  "max_sequence_length"}
_TEXT_KEYS = re.compile(r"^model\.(embed_tokens|layers|norm)\.")
_VISION_COPY = "model.vision_tower.vision_tower."
_VISION_PARTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")
_DROP = re.compile(r"(\.inv_freq$|^model\.image_newline$|position_ids$)")


# ---- reading ----------------------------------------------------------------------------------
def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder: safetensors if any, else PyTorch ``.bin`` files."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise MedbenchModelError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return files


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder, through safetensors or ``torch.load(weights_only=True)``."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            out.update(load_file(str(f)))
        else:
            out.update(torch.load(f, map_location="cpu", weights_only=True))
    return out


def source_hashes(folder: Path) -> dict[str, str]:
    from medbench.hashing import sha256_file

    names = ("config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "added_tokens.json")
    files = weight_files(folder) + [folder / n for n in names if (folder / n).is_file()]
    return {f.name: sha256_file(f) for f in files}


def read_original_config(src: Path, kind: str, model_types: tuple[str, ...]) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise MedbenchModelError(f"{kind} original: no config.json in {src}; expected {EXPECTED[kind]}")
    cfg = read_json(path)
    if cfg.get("model_type") not in model_types:
        raise MedbenchModelError(f"{src}: model_type {cfg.get('model_type')!r} is not a {kind} original checkpoint "
                                 f"(expected {' or '.join(model_types)}); expected {EXPECTED[kind]}")
    return cfg


def load_source_tokenizer(src: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=True, trust_remote_code=False)
    except (ImportError, ValueError, OSError) as exc:
        raise MedbenchModelError(f"{src}: cannot load the tokenizer ({exc}); a tokenizer.model needs the "
                                 "`sentencepiece` and `protobuf` packages") from None


def vision_from_clip(folder: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(CLIPVisionConfig, Llava vision-tower tensors)`` from a local CLIP or CLIP-vision folder."""
    from transformers import CLIPConfig, CLIPVisionConfig

    cfg = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if cfg.get("model_type") == "clip":
        vision = CLIPConfig.from_pretrained(folder, local_files_only=True).vision_config
    elif cfg.get("model_type") == "clip_vision_model":
        vision = CLIPVisionConfig.from_pretrained(folder, local_files_only=True)
    else:
        raise MedbenchModelError(f"{folder}: expected a CLIP folder (config.json model_type clip or "
                                 "clip_vision_model, model.safetensors or pytorch_model.bin)")
    tensors = {}
    for key, value in load_weights(folder).items():
        if key.startswith("vision_model."):
            key = key[len("vision_model."):]
        elif not key.startswith(_VISION_PARTS) or cfg.get("model_type") != "clip_vision_model":
            continue
        if not _DROP.search(key):
            tensors["model.vision_tower." + key] = value
    return vision, tensors


def checkpoint_vision(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's own vision-tower copy (``model.vision_tower.vision_tower.vision_model.*``), Llava names."""
    out = {}
    for key, value in original.items():
        if key.startswith(_VISION_COPY) and not _DROP.search(key):
            rest = key[len(_VISION_COPY):]
            out["model.vision_tower." + rest.removeprefix("vision_model.")] = value
    return out


def compare_vision(local: dict[str, torch.Tensor], checkpoint: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How the checkpoint's own vision copy relates to the tensors used."""
    if not checkpoint:
        return {"present": False}
    mapped = checkpoint
    common = sorted(set(mapped) & set(local))
    diff = max((float((mapped[k].float() - local[k].float()).abs().max()) for k in common
                if mapped[k].shape == local[k].shape), default=0.0)
    return {"present": True, "n_tensors": len(mapped), "n_common": len(common), "max_abs_diff": diff,
            "equal": len(common) == len(mapped) == len(local) and diff == 0.0}


# ---- mapping ----------------------------------------------------------------------------------
def text_config(kind: str, cfg: dict[str, Any], tokenizer: Any) -> Any:
    """The language-model config from the original fields (mm_* and wrapper fields dropped)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    fields = {k: v for k, v in cfg.items() if not k.startswith("mm_") and k not in _NON_TEXT_KEYS}
    fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True)
    cls = {"llava-med-v1.5": MistralConfig, "huatuogpt-vision-7b": Qwen2Config, "llava-med-v1": LlamaConfig}[kind]
    config = cls(**fields)
    if getattr(config, "head_dim", None) in (None, 0):
        config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def map_key(key: str) -> str | None:
    """The Llava name of an original key; ``None`` for dropped keys."""
    if _DROP.search(key):
        return None
    if _TEXT_KEYS.match(key):
        return "model.language_model." + key[len("model."):]
    if key == "lm_head.weight":
        return key
    m = re.match(r"^model\.mm_projector\.(?:(0|2)\.)?(weight|bias)$", key)
    if m:
        return f"model.multi_modal_projector.linear_{1 if m.group(1) in (None, '0') else 2}.{m.group(2)}"
    raise MedbenchModelError(f"unexpected tensor {key!r} in the original checkpoint")


def resize_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with rows appended up to ``rows``, each the mean of the existing rows."""
    if t.shape[0] >= rows:
        return t
    mean = t.float().mean(0, keepdim=True).to(t.dtype)
    return torch.cat([t, mean.expand(rows - t.shape[0], -1)], 0)


def add_special(tokenizer: Any, token: str, expected_id: int | None = None) -> int:
    """Add ``token`` as a special token (if missing) and return its id, checking ``expected_id``."""
    from tokenizers import AddedToken

    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    tid = int(tokenizer.convert_tokens_to_ids(token))
    if expected_id is not None and tid != expected_id:
        raise MedbenchModelError(f"token {token!r} got id {tid}, expected {expected_id}")
    return tid


def check_bijection(config: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Raise unless the tensors match ``LlavaForConditionalGeneration(config)`` key for key and shape for shape."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k])
    if missing or extra or bad:
        raise MedbenchModelError(f"converted keys do not match LlavaForConditionalGeneration: missing {missing[:5]}, "
                                 f"unexpected {extra[:5]}, wrong shape {[(k, tuple(tensors[k].shape)) for k in bad[:5]]}")


# ---- writing ----------------------------------------------------------------------------------
def save_shards(tensors: dict[str, torch.Tensor], dst: Path, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Write safetensors shards (plus an index when there are several); returns the file names."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t.clone() if t.untyped_storage().nbytes() != nbytes else t
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for name, shard in zip(names, shards):
        save_file(shard, str(dst / name), metadata={"format": "pt"})
    if n > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names


def write_checkpoint(dst: Path, adapter: type[LlavaBackbone], config: Any, tensors: dict[str, torch.Tensor],
                     tokenizer: Any, record: dict[str, Any], *, force: bool = False) -> Path:
    """Write a complete ``LlavaForConditionalGeneration`` folder atomically (temporary folder + rename)."""
    from transformers import GenerationConfig

    from medbench.atomic import atomic_write_json
    from medbench.hashing import sha256_file

    check_bijection(config, tensors)
    if dst.exists() and any(dst.iterdir()) and not force:
        raise MedbenchModelError(f"{dst} exists and is not empty; choose a new folder or pass --force")
    tmp = dst.with_name(f".{dst.name}.converting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = save_shards(tensors, tmp)
    config.save_pretrained(tmp)
    adapter.build_processor(tokenizer, config, adapter.default_template).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    text = config.text_config
    GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                     pad_token_id=text.pad_token_id).save_pretrained(tmp)
    record = {"converter": "medbench.backbones.convert", "converter_version": CONVERTER_VERSION,
              "adapter": adapter.name, "template": adapter.default_template.name, **record,
              "checks": {"key_bijection": True, **record.get("checks", {})},
              "output_sha256": {n: sha256_file(tmp / n) for n in names}}
    atomic_write_json(tmp / CONVERSION_RECORD, record)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def llava_config(text: Any, vision: Any, image_id: int, layer: int, act: str) -> Any:
    from transformers import LlavaConfig

    grid = vision.image_size // vision.patch_size
    return LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_id,
                       image_seq_length=grid * grid, vision_feature_layer=layer,
                       vision_feature_select_strategy="default", projector_hidden_act=act,
                       multimodal_projector_bias=True, tie_word_embeddings=False)


# ---- the three conversions ----------------------------------------------------------------------
def convert(kind: str, src: str | os.PathLike, dst: str | os.PathLike, *, vision: str | None = None,
            base: str | None = None, force: bool = False) -> Path:
    """Convert an original checkpoint of ``kind`` (one of :data:`KINDS`) in ``src`` to an HF folder ``dst``."""
    src_path = Path(src).expanduser()
    if not src_path.is_dir():
        raise MedbenchModelError(f"{kind} original: {src_path} is not a directory; expected {EXPECTED[kind]}")
    if kind == "llava-med-v1":
        if base is None:
            raise MedbenchModelError("llava-med-v1: pass --base, the original LLaMA-7B in HF format")
        return convert_v1(src_path, Path(dst), resolve_path_or_name(base), vision, force)
    if kind in ("llava-med-v1.5", "huatuogpt-vision-7b"):
        return convert_mlp(kind, src_path, Path(dst), vision, force)
    raise MedbenchModelError(f"unknown conversion {kind!r}; known: {', '.join(KINDS)}")


def convert_mlp(kind: str, src: Path, dst: Path, vision: str | None, force: bool) -> Path:
    """LLaVA-Med v1.5 (``llava_mistral``) or HuatuoGPT-Vision (``llava_qwen2``): two-layer GELU projector."""
    huatuo = kind == "huatuogpt-vision-7b"
    cfg = read_original_config(src, kind, ("llava_qwen2",) if huatuo else ("llava_mistral",))
    if cfg.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise MedbenchModelError(f"{src}: mm_projector_type {cfg['mm_projector_type']!r}, expected mlp2x_gelu")
    tokenizer = load_source_tokenizer(src)
    original = load_weights(src)
    ckpt_vision = checkpoint_vision(original)
    tensors = {m: v for k, v in original.items() if not k.startswith(_VISION_COPY) and (m := map_key(k))}
    vit_dir = src / "vit" / "clip_vit_large_patch14_336"
    if vision is not None:
        vision_dir = resolve_path_or_name(vision)
    elif huatuo:
        if not vit_dir.is_dir():
            raise MedbenchModelError(f"{src}: HuatuoGPT-Vision needs its vision tower at {vit_dir} "
                                     "(config.json, pytorch_model.bin); medbench does not fall back to the hub")
        vision_dir = vit_dir
    else:
        vision_dir = resolve_path_or_name(cfg["mm_vision_tower"])
    vision_cfg, vision_tensors = vision_from_clip(vision_dir)
    from_ckpt = huatuo and bool(ckpt_vision) and vision is None
    vision_info = {"config_from": str(vision_dir), "checkpoint_copy": compare_vision(vision_tensors, ckpt_vision),
                   "weights_from": "main checkpoint" if from_ckpt else str(vision_dir)}
    if from_ckpt:
        vision_tensors = ckpt_vision
    tensors.update(vision_tensors)
    text = text_config(kind, cfg, tokenizer)
    base_vocab = len(tokenizer)
    image_id = add_special(tokenizer, "<image>", base_vocab)
    added = {"<image>": image_id}
    if huatuo:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        added["<pad>"] = add_special(tokenizer, "<pad>", base_vocab + 1)
        tokenizer.pad_token = "<pad>"
    rows = max(int(text.vocab_size), math.ceil(len(tokenizer) / 64) * 64)
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        tensors[key] = resize_rows(tensors[key], rows)
    text.vocab_size = rows
    text.pad_token_id = tokenizer.pad_token_id
    config = llava_config(text, vision_cfg, image_id, int(cfg.get("mm_vision_select_layer", -2)), "gelu")
    record = {"kind": kind, "source_sha256": source_hashes(src), "vision": vision_info, "added_tokens": added,
              "resized_rows": {"from": int(cfg["vocab_size"]), "to": rows, "init": "mean"},
              "suppressed_token_ids": sorted(set(added.values()) - {tokenizer.eos_token_id})}
    return write_checkpoint(dst, ADAPTERS[kind], config, tensors, tokenizer, record, force=force)


def apply_delta(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LLaVA-Med v1 ``apply_delta.py``: target = delta + base (first base rows for embeddings/head)."""
    out: dict[str, torch.Tensor] = {}
    for name, d in delta.items():
        if name not in base:
            if not name.startswith("model.mm_projector.") and not _DROP.search(name):
                raise MedbenchModelError(f"delta tensor {name!r} is missing from the base model")
            out[name] = d.clone()
            continue
        b = base[name].to(d.dtype)
        if d.shape == b.shape:
            out[name] = d + b
        elif name in ("model.embed_tokens.weight", "lm_head.weight") and d.shape[1:] == b.shape[1:]:
            t = d.clone()
            t[: b.shape[0]] += b
            out[name] = t
        else:
            raise MedbenchModelError(f"delta {name} has shape {tuple(d.shape)}, base {tuple(b.shape)}")
    return out


def convert_v1(src: Path, dst: Path, base: Path, vision: str | None, force: bool) -> Path:
    """LLaVA-Med v1: delta + base LLaMA-7B → Llava with a linear projector (``linear_2`` = identity)."""
    kind = "llava-med-v1"
    cfg = read_original_config(src, kind, ("llava",))
    tokenizer = load_source_tokenizer(src)
    added_path = src / "added_tokens.json"
    added = json.loads(added_path.read_text()) if added_path.is_file() else {}
    for token, tid in sorted(added.items(), key=lambda kv: kv[1]):
        add_special(tokenizer, token, int(tid))
    if "[PAD]" in tokenizer.get_vocab():
        tokenizer.pad_token = "[PAD]"
    merged = apply_delta(load_weights(base), load_weights(src))
    tensors = {m: v for k, v in merged.items() if (m := map_key(k))}
    hidden = int(cfg["hidden_size"])
    proj = tensors["model.multi_modal_projector.linear_1.weight"]
    tensors["model.multi_modal_projector.linear_2.weight"] = torch.eye(hidden, dtype=proj.dtype)
    tensors["model.multi_modal_projector.linear_2.bias"] = torch.zeros(hidden, dtype=proj.dtype)
    vision_dir = resolve_path_or_name(vision or cfg.get("mm_vision_tower", "openai/clip-vit-large-patch14"))
    vision_cfg, vision_tensors = vision_from_clip(vision_dir)
    tensors.update(vision_tensors)
    text = text_config(kind, cfg, tokenizer)
    text.pad_token_id = tokenizer.pad_token_id
    image_id = add_special(tokenizer, "<im_patch>")
    for token in ("<im_start>", "<im_end>"):
        add_special(tokenizer, token)
    config = llava_config(text, vision_cfg, image_id, int(cfg.get("mm_vision_select_layer", -2)), "linear")
    record = {"kind": kind, "source_sha256": source_hashes(src), "base_sha256": source_hashes(base),
              "vision": {"config_from": str(vision_dir), "weights_from": str(vision_dir)},
              "added_tokens": {t: int(i) for t, i in added.items()},
              "projector": "linear_1 = mm_projector, linear_2 = identity, act linear",
              "mm_use_im_start_end": bool(cfg.get("mm_use_im_start_end", True))}
    return write_checkpoint(dst, ADAPTERS[kind], config, tensors, tokenizer, record, force=force)
