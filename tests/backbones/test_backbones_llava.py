"""Adapters on HF-layout folders (community ``-hf`` conversions), adapter dispatch, offline and
safe loading, and random-weight real-architecture shapes for ``medbench bench --shape``."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import test_backbones_fixtures  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is used)
import torch
from PIL import Image

from medbench import geometry as geo
from medbench.backbones import llava, shapes
from medbench.backbones.local_models import MedbenchModelError
from medbench.types import AnswerType, RoI, Sample

ROOT = Path(__file__).resolve().parents[2]


def sample(question: str = "Is the liver normal?") -> Sample:
    return Sample(id="s", image_path="unused", question=question, answer="yes", answer_type=AnswerType.CLOSED,
                  split="test")


def write_hf(folder: Path, name: str, **config_edits) -> Path:
    """A community-style ``-hf`` folder: transformers' own save, no medbench record, no processor fixes."""
    backbone = shapes.build_shape(name, "tiny")
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in config_edits.items():
        target = cfg["text_config"] if key.startswith("text_") else cfg
        target[key.removeprefix("text_")] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "processor_config.json").write_text(json.dumps({"patch_size": None, "processor_class": "LlavaProcessor"}))
    return folder


@pytest.fixture(scope="module")
def hf_v15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf(tmp_path_factory.mktemp("hf") / "llava-med-v1.5-mistral-7b-hf", "llava-med-v1.5", text_head_dim=None)


def test_community_v15_folder_loads_with_fixes(hf_v15: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from medbench.methods.greedy import Greedy
    from medbench.models import load_backbone

    calls: list[dict] = []
    for cls in (AutoTokenizer, LlavaForConditionalGeneration):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _orig=original, **kwargs):
            calls.append(kwargs)
            return _orig(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))

    def no_network(*args, **kwargs):
        raise AssertionError("network access while loading a local model")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    backbone = load_backbone(str(hf_v15))
    assert type(backbone) is llava.LlavaMedV15
    assert calls and all(c.get("trust_remote_code", False) is False for c in calls)
    assert all(c.get("local_files_only") for c in calls)
    assert any(c.get("use_safetensors") is True for c in calls)
    assert backbone.processor.patch_size == 14 and backbone.processor.num_additional_image_tokens == 1
    assert backbone.model.config.text_config.head_dim == 16
    assert backbone.model.dtype == torch.float32 and backbone.image_backend == "pil"
    batch = backbone.encode_prompts([sample(), sample("Where?")], [Image.new("RGB", (60, 30)), Image.new("L", (9, 20))])
    gen = Greedy().generate(backbone, batch, [0, 1], 3)
    assert len(gen.tokens) == 2
    record = json.loads(json.dumps(backbone.geometry()))
    roi = RoI(boxes=((10.0, 5.0, 40.0, 25.0),))
    assert np.array_equal(geo.roi_in_frame(roi, (60, 30), record), backbone.roi_in_input_frame(roi, (60, 30)))
    grid = backbone.roi_to_grid(roi, (60, 30))
    assert grid.shape == (24, 24) and grid[:6].sum() == 0 and grid[18:].sum() == 0
    assert backbone.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}], tokenize=False
    ) == "[INST] <image>\nQ? [/INST]"


def test_community_huatuo_stale_pad_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medbench.models import load_backbone

    folder = write_hf(tmp_path / "HuatuoGPT-Vision-7B-hf", "huatuogpt-vision-7b", text_pad_token_id=32001)
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    monkeypatch.setenv("MEDBENCH_DEVICE_MAP", "auto")
    backbone = load_backbone(str(folder))
    assert type(backbone) is llava.HuatuoGPTVision and backbone.device.type == "cpu"
    eos = backbone.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert backbone.pad_token_id == backbone.eos_token_id == eos
    assert backbone.model.config.text_config.pad_token_id == eos
    assert not backbone.template.add_bos and backbone.num_image_tokens == 576


def test_adapter_dispatch(tmp_path: Path) -> None:
    def folder(name: str, cfg: dict) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    def hf(text: str, size: int, patch: int = 14, act: str = "gelu") -> dict:
        return {"model_type": "llava", "text_config": {"model_type": text}, "projector_hidden_act": act,
                "vision_config": {"image_size": size, "patch_size": patch}}

    assert llava.adapter_for(folder("q", hf("qwen2", 336))) is llava.HuatuoGPTVision
    assert llava.adapter_for(folder("m", hf("mistral", 336))) is llava.LlavaMedV15
    assert llava.adapter_for(folder("v1", hf("llama", 224, act="linear"))) is llava.LlavaMedV1
    assert llava.adapter_for(folder("l15", hf("llama", 336))) is llava.Llava15
    assert llava.adapter_for(folder("tiny", hf("llama", 224, patch=16))) is None
    rec = folder("rec", hf("llama", 336))
    (rec / llava.CONVERSION_RECORD).write_text(json.dumps({"adapter": "llava-med-v1.5"}))
    assert llava.adapter_for(rec) is llava.LlavaMedV15
    with pytest.raises(MedbenchModelError, match="medbench convert huatuogpt-vision-7b"):
        llava.adapter_for(folder("orig", {"model_type": "llava_qwen2"}))
    with pytest.raises(MedbenchModelError, match="medbench convert llava-med-v1 "):
        llava.adapter_for(folder("v1orig", {"model_type": "llava", "mm_vision_tower": "openai/clip-vit-large-patch14"}))


def test_pickled_weights_refused(tmp_path: Path) -> None:
    d = tmp_path / "binonly"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"model_type": "mistral"}}))
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(MedbenchModelError, match="safetensors"):
        llava.LlavaMedV15.load(d)


def test_no_remote_code_or_unsafe_loading_in_backbones() -> None:
    files = list((ROOT / "medbench" / "backbones").glob("*.py")) + [ROOT / "medbench" / "models.py"]
    for f in files:
        text = f.read_text()
        assert "trust_remote_code=True" not in text, f
        assert not re.search(r"pickle\.loads?\(", text), f
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (f, call)
        for call in re.findall(r"Auto\w+\.from_pretrained\([^)]*\)", text):
            assert "trust_remote_code=False" in call and "local_files_only=True" in call, (f, call)


@pytest.mark.parametrize("name, text_cls, vocab, tokens", [
    ("llava-med-v1", "LlamaConfig", 32004, 256),
    ("llava-med-v1.5", "MistralConfig", 32064, 576),
    ("huatuogpt-vision-7b", "Qwen2Config", 152064, 576),
])
def test_shapes(name: str, text_cls: str, vocab: int, tokens: int) -> None:
    from transformers import LlavaForConditionalGeneration

    from medbench.methods.greedy import Greedy

    tok = shapes.shape_tokenizer(name)
    full = shapes.shape_config(name, "full", tok, 5)
    assert type(full.text_config).__name__ == text_cls and full.text_config.vocab_size == vocab
    with torch.device("meta"):
        n = sum(p.numel() for p in LlavaForConditionalGeneration(full).parameters())
    assert 7.0e9 < n < 8.0e9
    assert full.vision_config.hidden_size == 1024 and full.vision_config.num_hidden_layers == 24
    backbone = shapes.build_shape(name, "tiny")
    assert backbone.num_image_tokens == tokens and backbone.model.config.text_config.vocab_size == vocab
    batch = backbone.encode_prompts([sample()], [Image.new("RGB", (50, 40), (90, 20, 20))])
    gen = Greedy().generate(backbone, batch, [0], 3)
    assert len(gen.tokens[0]) == 3


def test_bench_decode_with_shape(capsys: pytest.CaptureFixture[str]) -> None:
    from medbench.cli import main

    rc = main(["bench", "decode", "--shape", "llava-med-v1.5", "--shape-scale", "tiny", "--samples", "2",
               "--batch-sizes", "2", "--max-new-tokens", "2", "--device", "cpu", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["model"] == "shape:llava-med-v1.5:tiny" and out["rows"][0]["batch_size"] == 2
    assert (out["warmup"], out["repeats"], out["statistic"]) == (1, 3, "median")


def test_bench_decode_interleaves_and_reports_ratios() -> None:
    """Every (method, batch size) is timed ``repeats`` times; ratios are against the first method."""
    from medbench.bench import bench_decode

    out = bench_decode("tiny-med-llava", methods=("greedy", "vcd"), batch_sizes=(1, 2), n_samples=2,
                       max_new_tokens=2, device="cpu", repeats=2, warmup=0, shape="llava-med-v1.5",
                       shape_scale="tiny")
    rows = {(r["method"], r["batch_size"]): r for r in out["rows"]}
    assert set(rows) == {("greedy", 1), ("greedy", 2), ("vcd", 1), ("vcd", 2)}
    assert rows[("greedy", 1)]["speedup_vs_bs1"] == 1.0
    assert rows[("greedy", 1)]["token_time_vs_first"] == rows[("greedy", 2)]["token_time_vs_first"] == 1.0
    for r in rows.values():
        assert r["spread"] >= 1.0 and r["samples"] == 2
    vcd = rows[("vcd", 2)]
    assert vcd["token_time_vs_first"] == round(vcd["ms_per_token"] / rows[("greedy", 2)]["ms_per_token"], 3)
    with pytest.raises(ValueError, match="repeats"):
        bench_decode(repeats=0)


def test_bench_decode_runs_every_decoding_method() -> None:
    """Methods that need per-batch preparation (ControlMLLM's RoIs, OPERA's report mode) run as in `run`."""
    from medbench.bench import bench_decode
    from medbench.registry import METHODS

    names = tuple(n for n in METHODS.names() if METHODS.entry(n).info["kind"] == "decoding")
    assert "controlmllm" in names and "opera" in names
    out = bench_decode("tiny-med-llava", methods=names, batch_sizes=(2,), n_samples=2, max_new_tokens=2,
                       device="cpu", repeats=1, warmup=0)
    assert {r["method"] for r in out["rows"]} == set(names)


def test_device_map_auto_loads_dispatched_and_decodes_the_same(hf_v15: Path) -> None:
    """``--device-map auto`` loads through transformers' device placement (with several GPUs it
    splits the layers; on a CPU-only machine everything lands on the CPU) and decodes the same."""
    from medbench.engine import answer_attention
    from medbench.methods.greedy import Greedy
    from medbench.models import load_backbone

    plain, mapped = load_backbone(str(hf_v15)), load_backbone(str(hf_v15), device_map="auto")
    assert {p.device.type for p in mapped.model.parameters()} == {"cpu"}
    assert mapped.device == torch.device("cpu") and mapped.model.dtype == torch.float32
    images = [Image.new("RGB", (60, 30), (200, 10, 10)), Image.new("L", (9, 20), 90)]
    outputs = []
    for backbone in (plain, mapped):
        batch = backbone.encode_prompts([sample(), sample("Where?")], images)
        tokens = Greedy().generate(backbone, batch, [0, 1], 4).tokens
        outputs.append((tokens, answer_attention(backbone, batch, tokens)))
    (tok_a, att_a), (tok_b, att_b) = outputs
    assert tok_a == tok_b and all(len(t) for t in tok_a)
    assert all(a is not None and np.allclose(a, b) for a, b in zip(att_a, att_b))


def test_device_map_is_refused_with_data_parallel_ranks(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from medbench.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = main(["train", "--method", "lora", "--task", "phantom-vqa", "--device-map", "auto"])
    assert code == 2 and "do not combine it with data-parallel ranks" in capsys.readouterr().err
