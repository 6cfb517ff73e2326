"""``medbench convert``: original layouts → LlavaForConditionalGeneration with identical logits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_backbones_fixtures import (
    CLIP_224,
    CLIP_336,
    V1_ADDED,
    original_weights,
    reference_logits,
    write_huatuogpt,
    write_llava_med_v1,
    write_llava_med_v15,
)

from medbench.backbones.local_models import MedbenchModelError, env_var
from medbench.cli import main
from medbench.types import AnswerType, Sample

Q = "Is the liver normal?"


def sample(question: str = Q) -> Sample:
    return Sample(id="s", image_path="unused", question=question, answer="yes", answer_type=AnswerType.CLOSED,
                  split="test")


def image(w: int = 64, h: int = 48, mode: str = "RGB", seed: int = 0) -> Image.Image:
    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")
    return Image.fromarray(arr).convert(mode)


def converted_weights(dst: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(dst.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_identical_logits(orig, weights, dst: Path, backbone, im: Image.Image) -> None:
    """The converted model (eager, fp32) reproduces the original-layout forward bit for bit."""
    from transformers import LlavaForConditionalGeneration

    batch = backbone.encode_prompts([sample()], [im])
    ids = batch.input_ids[0].tolist()
    start, end = backbone.image_span(ids)
    ref = reference_logits(orig, weights, ids[:start], ids[end:], batch.pixel_values)
    model = LlavaForConditionalGeneration.from_pretrained(dst, attn_implementation="eager", dtype=torch.float32,
                                                          local_files_only=True)
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, pixel_values=batch.pixel_values).logits
        via_backbone = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      pixel_values=batch.pixel_values).logits
    vocab = ref.shape[-1]
    assert torch.equal(out[..., :vocab], ref)
    keep = torch.ones(via_backbone.shape[-1], dtype=torch.bool)
    keep[backbone.suppressed_token_ids] = False
    assert (via_backbone[..., ~keep] == -1.0e4).all()
    torch.testing.assert_close(via_backbone[..., keep[:vocab].nonzero()[:, 0]], ref[..., keep[:vocab]],
                               atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def v15(tmp_path_factory: pytest.TempPathFactory):
    from medbench.models import load_backbone

    root = tmp_path_factory.mktemp("v15")
    orig = write_llava_med_v15(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env_var(CLIP_336), str(orig.extra["clip"]))
        assert main(["convert", "llava-med-v1.5", str(orig.src), str(root / "hf")]) == 0
    return orig, root / "hf", load_backbone(str(root / "hf"))


def test_v15_output_layout_and_record(v15) -> None:
    orig, dst, backbone = v15
    names = {p.name for p in dst.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja",
            "tokenizer.json", "medbench_conversion.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    record = json.loads((dst / "medbench_conversion.json").read_text())
    assert record["adapter"] == "llava-med-v1.5" and record["template"] == "mistral_instruct"
    assert record["added_tokens"] == {"<image>": 32000, "<pad>": 32001}
    assert record["resized_rows"] == {"from": 32000, "to": 32064, "init": "mean"}
    assert record["vision"]["checkpoint_copy"]["equal"] is True
    assert {"config.json", "tokenizer.json", "model-00001-of-00002.safetensors"} <= set(record["source_sha256"])
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["image_token_index"] == 32000 and cfg["image_seq_length"] == 576
    assert cfg["projector_hidden_act"] == "gelu" and cfg["text_config"]["model_type"] == "mistral"
    proc = json.loads((dst / "processor_config.json").read_text())
    assert proc["patch_size"] == 14 and proc["num_additional_image_tokens"] == 1
    w = converted_weights(dst)
    emb = w["model.language_model.embed_tokens.weight"]
    assert emb.shape[0] == 32064 and torch.allclose(emb[32000], emb[:32000].mean(0), atol=1e-6)
    assert torch.equal(emb[:32000], original_weights(orig.src)["model.embed_tokens.weight"])


def test_v15_identical_logits(v15) -> None:
    orig, dst, backbone = v15
    assert_identical_logits(orig, original_weights(orig.src), dst, backbone, image())


def test_v15_backbone_prompt_and_generation(v15) -> None:
    from medbench.methods.greedy import Greedy

    _, _, backbone = v15
    assert type(backbone).__name__ == "LlavaMedV15" and backbone.template.name == "mistral_instruct"
    assert backbone.model.config.text_config._attn_implementation == "medbench"
    assert backbone.geometry() == {"mode": "pad_square+resize", "size": 336, "grid_size": 24,
                                   "fill_rgb": [122, 116, 104], "fill_l": 114}
    ids = backbone.tokenize_prompt(backbone.prompt_text(sample()))
    assert ids[0] == 1 and ids.count(1) == 1 and backbone.image_span(ids) == (3, 579)
    assert ids[:3] == backbone.tokenizer("[INST] ")["input_ids"]
    ims = [image(64, 48), image(48, 64, "L", seed=1)]
    batch = backbone.encode_prompts([sample(), sample("What organ is shown?")], ims)
    assert batch.pixel_values.shape == (2, 3, 336, 336)
    gen = Greedy().generate(backbone, batch, [0, 1], 4)
    assert len(gen.tokens) == 2
    assert not set(t for row in gen.tokens for t in row) & set(backbone.suppressed_token_ids)
    assert {32000, 32001, 32063} <= set(backbone.suppressed_token_ids)


def test_v15_grey_image_padded_with_114(v15) -> None:
    _, _, backbone = v15
    grey = Image.new("L", (40, 20), 200)
    px = backbone.pixel_values([grey])[0]
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    corner = (px[:, 0, 0] * std + mean) * 255
    assert torch.allclose(corner, torch.full((3,), 114.0), atol=1.0)


def test_v15_named_and_original_paths(v15, monkeypatch: pytest.MonkeyPatch) -> None:
    from medbench.models import load_backbone

    orig, dst, _ = v15
    monkeypatch.setenv("MEDBENCH_MODELS_LLAVA_MED_V1_5", str(dst))
    assert type(load_backbone("llava-med-v1.5")).__name__ == "LlavaMedV15"
    with pytest.raises(MedbenchModelError, match="medbench convert llava-med-v1.5"):
        load_backbone(str(orig.src))


def test_v15_conversion_errors(v15, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medbench.backbones.convert import convert

    orig, dst, _ = v15
    monkeypatch.delenv(env_var(CLIP_336), raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(MedbenchModelError, match=env_var(CLIP_336)):
        convert("llava-med-v1.5", orig.src, tmp_path / "out")
    with pytest.raises(MedbenchModelError, match="not empty"):
        convert("llava-med-v1.5", orig.src, dst, vision=str(orig.extra["clip"]))
    with pytest.raises(MedbenchModelError, match="llava_mistral"):
        convert("llava-med-v1.5", dst, tmp_path / "out2", vision=str(orig.extra["clip"]))


@pytest.fixture(scope="module")
def huatuo(tmp_path_factory: pytest.TempPathFactory):
    from medbench.models import load_backbone

    root = tmp_path_factory.mktemp("huatuo")
    orig = write_huatuogpt(root)
    assert main(["convert", "huatuogpt-vision-7b", str(orig.src), str(root / "hf")]) == 0
    return orig, root / "hf", load_backbone(str(root / "hf"))


def test_huatuo_conversion(huatuo) -> None:
    orig, dst, backbone = huatuo
    record = json.loads((dst / "medbench_conversion.json").read_text())
    assert record["vision"]["weights_from"] == "main checkpoint"
    assert record["vision"]["checkpoint_copy"]["equal"] is False
    n_tok = len(backbone.tokenizer)
    assert record["added_tokens"] == {"<image>": n_tok - 1}
    assert backbone.model.config.text_config.vocab_size == orig.text_config.vocab_size
    assert backbone.pad_token_id == backbone.eos_token_id == backbone.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert_identical_logits(orig, original_weights(orig.src), dst, backbone, image(50, 70))


def test_huatuo_prompt_has_no_bos_and_generates(huatuo) -> None:
    from medbench.methods.greedy import Greedy

    _, _, backbone = huatuo
    ids = backbone.tokenize_prompt(backbone.prompt_text(sample()))
    expected_head = backbone.tokenizer("<|user|>\n", add_special_tokens=False)["input_ids"]
    assert ids[: len(expected_head)] == expected_head
    assert backbone.geometry()["fill_l"] is None
    batch = backbone.encode_prompts([sample(), sample("Where?")], [image(), image(30, 90)])
    assert batch.input_ids[1, 0] == backbone.pad_token_id and batch.attention_mask[1, 0] == 0
    assert len(Greedy().generate(backbone, batch, [0, 1], 3).tokens) == 2


def test_huatuo_missing_vit(tmp_path: Path) -> None:
    import shutil

    from medbench.backbones.convert import convert

    src = tmp_path / "h"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llava_qwen2"}))
    shutil.copy(Path(__file__), src / "pytorch_model.bin")
    with pytest.raises(MedbenchModelError):
        convert("huatuogpt-vision-7b", src, tmp_path / "out")


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory):
    from medbench.models import load_backbone

    root = tmp_path_factory.mktemp("v1")
    orig = write_llava_med_v1(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env_var(CLIP_224), str(orig.extra["clip"]))
        assert main(["convert", "llava-med-v1", str(orig.src), str(root / "hf"), "--base",
                     str(orig.extra["base"])]) == 0
    return orig, root / "hf", load_backbone(str(root / "hf"))


def test_v1_delta_rule_and_identity_projector(v1) -> None:
    orig, dst, _ = v1
    w = converted_weights(dst)
    merged = orig.extra["merged"]
    assert w["model.language_model.embed_tokens.weight"].shape[0] == 32004
    assert torch.equal(w["model.language_model.embed_tokens.weight"], merged["model.embed_tokens.weight"])
    assert torch.equal(w["lm_head.weight"], merged["lm_head.weight"])
    assert torch.equal(w["model.multi_modal_projector.linear_1.weight"], merged["model.mm_projector.weight"])
    assert torch.equal(w["model.multi_modal_projector.linear_2.weight"], torch.eye(32))
    record = json.loads((dst / "medbench_conversion.json").read_text())
    assert record["added_tokens"] == V1_ADDED and "base_sha256" in record


def test_v1_identical_logits_and_prompt(v1) -> None:
    from medbench.methods.greedy import Greedy

    orig, dst, backbone = v1
    assert type(backbone).__name__ == "LlavaMedV1" and backbone.template.name == "a3tune_v1"
    assert backbone.geometry() == {"mode": "resize_shortest+center_crop", "shortest_edge": 224,
                                   "crop": [224, 224], "grid_size": 16}
    assert backbone.num_image_tokens == 256 and backbone.image_token == "<im_patch>"
    assert backbone.eos_token_id == 2 and backbone.tokenizer.bos_token_id == 1
    assert_identical_logits(orig, orig.extra["merged"], dst, backbone, image(70, 40))
    ids = backbone.tokenize_prompt(backbone.prompt_text(sample()))
    start, end = backbone.image_span(ids)
    assert ids[start - 1] == V1_ADDED["<im_start>"] and ids[end] == V1_ADDED["<im_end>"]
    with pytest.raises(ValueError, match="between"):
        backbone.image_span([1] + [V1_ADDED["<im_patch>"]] * 256 + [2])
    assert backbone.postprocess("Assistant: no###Human: x") == "no"
    batch = backbone.encode_prompts([sample()], [image(70, 40)])
    gen = Greedy().generate(backbone, batch, [0], 3)
    assert not set(gen.tokens[0]) & set(V1_ADDED.values())
    assert set(V1_ADDED.values()) <= set(backbone.suppressed_token_ids)


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None or importlib.util.find_spec("google") is None,
                    reason="tokenizer.model needs the sentencepiece and protobuf packages")
def test_v15_sentencepiece_tokenizer_model_only(v15, tmp_path: Path) -> None:
    """The published layout ships only ``tokenizer.model`` (needs sentencepiece + protobuf)."""
    import io
    import shutil

    import sentencepiece as spm

    from medbench.backbones.convert import convert
    from medbench.backbones.shapes import CORPUS

    orig, _, _ = v15
    src = tmp_path / "src"
    shutil.copytree(orig.src, src)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / name).unlink(missing_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, hard_vocab_limit=False,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    (src / "tokenizer.model").write_bytes(buf.getvalue())
    dst = convert("llava-med-v1.5", src, tmp_path / "dst", vision=str(orig.extra["clip"]))
    from medbench.models import load_backbone

    backbone = load_backbone(str(dst))
    n = len(spm.SentencePieceProcessor(model_proto=buf.getvalue()))
    assert backbone.image_token_id == n and backbone.pad_token_id == n + 1
    ids = backbone.tokenize_prompt(backbone.prompt_text(sample()))
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    start, end = backbone.image_span(ids)
    assert ids[:start] == [1] + sp.encode("[INST] ") and ids[end:] == sp.encode("\n" + Q + " [/INST]")
