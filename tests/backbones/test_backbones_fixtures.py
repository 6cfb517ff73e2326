"""Tiny random checkpoints in the published layouts (LLaVA-Med v1 base + delta, v1.5 original,
HuatuoGPT-Vision with ``vit/``, a community ``-hf`` folder), built from the real config classes,
plus an independent forward pass straight from an original layout's weights.

Imported by the other ``test_backbones_*`` modules; the tests here check the fixtures themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLIP_FIELDS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=14,
                   projection_dim=16)
TEXT_FIELDS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-5, initializer_range=0.02)
CLIP_336 = "openai/clip-vit-large-patch14-336"
CLIP_224 = "openai/clip-vit-large-patch14"


@dataclass
class Original:
    """An original-layout checkpoint and what an independent forward pass needs."""

    src: Path
    text_config: Any
    vision_config: Any
    vision_state: dict[str, torch.Tensor]
    projector: str
    extra: dict[str, Any]


def write_clip(folder: Path, image_size: int, *, full: bool = True, as_bin: bool = False, seed: int = 0) -> Path:
    """A tiny CLIP (full ``CLIPModel`` like the openai repos, or vision-only) in ``folder``."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vision = dict(image_size=image_size, **CLIP_FIELDS)
    if full:
        model = CLIPModel(CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                      num_attention_heads=2, vocab_size=99),
                                     vision_config=vision, projection_dim=16))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    folder.mkdir(parents=True, exist_ok=True)
    if as_bin:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    return folder


def clip_vision(folder: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """The vision config and ``vision_model.*`` tensors of a tiny CLIP folder (read independently)."""
    from transformers import CLIPConfig, CLIPVisionConfig

    cfg = json.loads((folder / "config.json").read_text())
    vision = (CLIPConfig.from_pretrained(folder).vision_config if cfg["model_type"] == "clip"
              else CLIPVisionConfig.from_pretrained(folder))
    sd = (load_file(str(folder / "model.safetensors")) if (folder / "model.safetensors").exists()
          else torch.load(folder / "pytorch_model.bin", weights_only=True))
    if cfg["model_type"] == "clip":
        return vision, {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")}
    return vision, dict(sd)


def original_config(text: dict[str, Any], **extra: Any) -> dict[str, Any]:
    fields = {**TEXT_FIELDS, **text, "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "float32",
              "initializer_range": 0.02, "transformers_version": "4.36.2"}
    return {**fields, **extra}


def write_shards(sd: dict[str, torch.Tensor], folder: Path, n: int = 2) -> None:
    keys = sorted(sd)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: sd[k].contiguous().clone() for k in keys[i::n]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _projector(clip_hidden: int, hidden: int, mlp: bool, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if not mlp:
        return {"model.mm_projector.weight": torch.randn(hidden, clip_hidden, generator=g) * 0.2,
                "model.mm_projector.bias": torch.randn(hidden, generator=g) * 0.1}
    return {"model.mm_projector.0.weight": torch.randn(hidden, clip_hidden, generator=g) * 0.2,
            "model.mm_projector.0.bias": torch.randn(hidden, generator=g) * 0.1,
            "model.mm_projector.2.weight": torch.randn(hidden, hidden, generator=g) * 0.2,
            "model.mm_projector.2.bias": torch.randn(hidden, generator=g) * 0.1}


def write_llava_med_v15(root: Path, seed: int = 0) -> Original:
    """LLaVA-Med v1.5 as published (``llava_mistral``, 2 safetensors shards) + a local CLIP-336."""
    from transformers import MistralConfig, MistralForCausalLM

    from medbench.backbones.shapes import llama_tokenizer

    clip = write_clip(root / "clip-336", 336, seed=seed)
    vision_cfg, vision_sd = clip_vision(clip)
    src = root / "llava-med-v1.5-mistral-7b"
    src.mkdir(parents=True)
    text = dict(vocab_size=32000, max_position_embeddings=4096, rope_theta=1e6, sliding_window=None,
                bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    text_cfg = MistralConfig(**{**TEXT_FIELDS, **text, "tie_word_embeddings": False})
    sd = dict(MistralForCausalLM(text_cfg).state_dict())
    sd.update(_projector(vision_cfg.hidden_size, text_cfg.hidden_size, True, seed))
    sd.update({f"model.vision_tower.vision_tower.vision_model.{k}": v.clone() for k, v in vision_sd.items()})
    write_shards(sd, src)
    cfg = original_config(text, architectures=["LlavaMistralForCausalLM"], model_type="llava_mistral",
                          mm_vision_tower=CLIP_336, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                          mm_vision_select_feature="patch", mm_patch_merge_type="flat", image_aspect_ratio="pad",
                          mm_use_im_start_end=False, mm_use_im_patch_token=False, mm_hidden_size=vision_cfg.hidden_size)
    (src / "config.json").write_text(json.dumps(cfg, indent=1))
    llama_tokenizer().save_pretrained(src)
    return Original(src, text_cfg, vision_cfg, vision_sd, "mlp", {"clip": clip})


def write_huatuogpt(root: Path, seed: int = 0) -> Original:
    """HuatuoGPT-Vision-7B as published (``llava_qwen2``), ``vit/`` as a pickle, a vision copy in the checkpoint."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from medbench.backbones.shapes import qwen_tokenizer

    src = root / "HuatuoGPT-Vision-7B"
    vit = write_clip(src / "vit" / "clip_vit_large_patch14_336", 336, as_bin=True, seed=seed + 1)
    vision_cfg, vit_sd = clip_vision(vit)
    ckpt_vision = {k: v + 0.01 for k, v in vit_sd.items()}
    tok = qwen_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(vocab_size=(len(tok) // 64 + 2) * 64, max_position_embeddings=4096, rope_theta=1e6,
                bos_token_id=eos, eos_token_id=eos, use_sliding_window=False, sliding_window=4096)
    torch.manual_seed(seed)
    text_cfg = Qwen2Config(**{**TEXT_FIELDS, **text, "tie_word_embeddings": False})
    sd = dict(Qwen2ForCausalLM(text_cfg).state_dict())
    sd.update(_projector(vision_cfg.hidden_size, text_cfg.hidden_size, True, seed))
    sd.update({f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in ckpt_vision.items()})
    write_shards(sd, src)
    cfg = original_config(text, architectures=["LlavaQwen2ForCausalLM"], model_type="llava_qwen2",
                          mm_vision_tower="./vit/clip_vit_large_patch14_336", mm_projector_type="mlp2x_gelu",
                          mm_vision_select_layer=-2, mm_vision_select_feature="patch", image_aspect_ratio="pad",
                          tokenizer_padding_side="right", mm_hidden_size=vision_cfg.hidden_size)
    cfg["use_cache"] = False
    (src / "config.json").write_text(json.dumps(cfg, indent=1))
    tok.save_pretrained(src)
    return Original(src, text_cfg, vision_cfg, ckpt_vision, "mlp", {})


V1_ADDED = {"<im_patch>": 32000, "<im_start>": 32001, "<im_end>": 32002, "[PAD]": 32003}


def write_llava_med_v1(root: Path, seed: int = 0) -> Original:
    """LLaVA-Med v1: LLaMA base (HF safetensors) + delta (``pytorch_model.bin``, 32,004 rows) + local CLIP-224."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from medbench.backbones.shapes import llama_tokenizer

    clip = write_clip(root / "clip-224", 224, seed=seed + 2)
    vision_cfg, vision_sd = clip_vision(clip)
    torch.manual_seed(seed)
    base_cfg = LlamaConfig(**{**TEXT_FIELDS, "num_key_value_heads": 4, "vocab_size": 32000,
                              "max_position_embeddings": 2048, "tie_word_embeddings": False})
    base = LlamaForCausalLM(base_cfg)
    base.save_pretrained(root / "llama-7b")
    llama_tokenizer().save_pretrained(root / "llama-7b")
    text_cfg = LlamaConfig(**{**base_cfg.to_dict(), "vocab_size": 32004})
    delta = {k: torch.randn_like(v) * 0.02 for k, v in LlamaForCausalLM(text_cfg).state_dict().items()}
    delta.update(_projector(vision_cfg.hidden_size, text_cfg.hidden_size, False, seed))
    merged = {}
    for k, d in delta.items():
        b = base.state_dict().get(k)
        merged[k] = d.clone() if b is None else (d + b if d.shape == b.shape else torch.cat([d[:32000] + b, d[32000:]]))
    src = root / "llava-med-7b-delta"
    src.mkdir()
    torch.save(delta, src / "pytorch_model.bin")
    cfg = original_config(dict(num_key_value_heads=4, vocab_size=32004, max_position_embeddings=2048, bos_token_id=0,
                               eos_token_id=1), architectures=["LlavaLlamaForCausalLM"], model_type="llava",
                          mm_vision_tower=CLIP_224, mm_vision_select_layer=-2, mm_use_im_start_end=True,
                          mm_hidden_size=vision_cfg.hidden_size, max_sequence_length=2048, torch_dtype="float16")
    (src / "config.json").write_text(json.dumps(cfg, indent=1))
    llama_tokenizer().save_pretrained(src)
    (src / "added_tokens.json").write_text(json.dumps(V1_ADDED))
    return Original(src, text_cfg, vision_cfg, vision_sd, "linear",
                    {"clip": clip, "base": root / "llama-7b", "merged": merged})


def reference_logits(orig: Original, weights: dict[str, torch.Tensor], before: list[int], after: list[int],
                     pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits computed directly from original-layout weights: CLIP → hidden_states[-2] without CLS →
    projector → spliced into the text embeddings at the placeholder (the reference's ``-200`` sentinel)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    text = AutoModelForCausalLM.from_config(orig.text_config, attn_implementation="eager")
    text.load_state_dict({k: v for k, v in weights.items() if not k.startswith(("model.mm_projector",
                                                                                 "model.vision_tower"))})
    tower = CLIPVisionModel._from_config(orig.vision_config, attn_implementation="eager")
    tower.load_state_dict(orig.vision_state)
    text.eval(), tower.eval()
    with torch.no_grad():
        feats = tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        if orig.projector == "linear":
            x = F.linear(feats, weights["model.mm_projector.weight"], weights["model.mm_projector.bias"])
        else:
            x = F.linear(F.gelu(F.linear(feats, weights["model.mm_projector.0.weight"],
                                         weights["model.mm_projector.0.bias"])),
                         weights["model.mm_projector.2.weight"], weights["model.mm_projector.2.bias"])
        emb = text.get_input_embeddings()
        embeds = torch.cat([emb(torch.tensor([before])), x[:1], emb(torch.tensor([after]))], 1)
        return text(inputs_embeds=embeds).logits


def original_weights(src: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        out.update(load_file(str(f)))
    for f in sorted(src.glob("pytorch_model*.bin")):
        out.update(torch.load(f, weights_only=True))
    return out


def test_v15_original_layout(tmp_path: Path) -> None:
    orig = write_llava_med_v15(tmp_path)
    cfg = json.loads((orig.src / "config.json").read_text())
    assert cfg["model_type"] == "llava_mistral" and cfg["mm_projector_type"] == "mlp2x_gelu"
    keys = set(original_weights(orig.src))
    assert "lm_head.weight" in keys and "model.mm_projector.2.bias" in keys
    assert any(k.startswith("model.vision_tower.vision_tower.vision_model.") for k in keys)
    assert len(list(orig.src.glob("model-*-of-00002.safetensors"))) == 2
