"""``medbench convert KIND SRC DST``: an original LLaVA-family checkpoint → HF Llava folder (offline)."""

from __future__ import annotations

import argparse

KIND_HELP = {
    "llava-med-v1.5": "LLaVA-Med v1.5 as Microsoft published it (llava_mistral)",
    "huatuogpt-vision-7b": "HuatuoGPT-Vision-7B as published (llava_qwen2, with vit/)",
    "llava-med-v1": "LLaVA-Med v1: SRC is the delta folder, --base the original LLaMA-7B (HF format)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert an original checkpoint to LlavaForConditionalGeneration format",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Converts offline, from local folders only. The output holds config, safetensors weights, "
        "tokenizer, processor (patch size, CLS count, chat template) and medbench_conversion.json.",
        epilog="examples:\n  medbench convert llava-med-v1.5 ~/models/llava-med-v1.5-mistral-7b ~/models/llava-med-v1.5-hf\n"
        "  medbench convert llava-med-v1.5 SRC DST --vision ~/models/clip-vit-large-patch14-336\n"
        "  medbench convert huatuogpt-vision-7b ~/models/HuatuoGPT-Vision-7B ~/models/huatuo-hf\n"
        "  medbench convert llava-med-v1 ~/models/llava-med-7b-delta ~/models/llava-med-v1-hf --base ~/models/llama-7b\n"
        "then: export MEDBENCH_MODELS_LLAVA_MED_V1_5=~/models/llava-med-v1.5-hf; medbench run --model llava-med-v1.5 ...",
    )
    p.add_argument("kind", choices=list(KIND_HELP), help="; ".join(f"{k}: {v}" for k, v in KIND_HELP.items()))
    p.add_argument("src", help="folder of the original checkpoint")
    p.add_argument("dst", help="output folder (must be new or empty unless --force)")
    p.add_argument("--vision", help="local CLIP folder or a configured name (default: the checkpoint's "
                   "mm_vision_tower resolved through the local model registry; HuatuoGPT: SRC/vit/...)")
    p.add_argument("--base", help="llava-med-v1 only: the original LLaMA-7B folder in HF format")
    p.add_argument("--force", action="store_true", help="replace a non-empty DST")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from medbench.backbones.convert import convert
    from medbench.backbones.llava import CONVERSION_RECORD

    out = convert(args.kind, args.src, args.dst, vision=args.vision, base=args.base, force=args.force)
    record = json.loads((out / CONVERSION_RECORD).read_text())
    print(json.dumps({"output": str(out), "adapter": record["adapter"], "vision": record.get("vision"),
                      "added_tokens": record.get("added_tokens"), "checks": record.get("checks")}, indent=1))
    return 0
