"""Random-weight stand-ins in the published file layouts of SAM and BiomedCLIP (tests only).

- :func:`write_tiny_sam`: a small SAM built from segment-anything's own classes and saved as an
  official-format ``.pth`` (a plain state dict). Its weights are random except for a few set so that
  the automatic mask generator returns masks at the reference thresholds: the image encoder's blocks
  are identities over a positional field with three Gaussian bumps per input frame, and each mask
  token's hypernetwork output is fitted (least squares) so its mask is one bump. The masks are
  blobs at fixed places of each generator crop, whatever the image; values are meaningless.
- :func:`write_tiny_biomedclip_download`: a folder shaped like the BiomedCLIP hub download
  (``open_clip_config.json`` naming a hub text model, ``open_clip_pytorch_model.bin``, BERT tokenizer
  files, the BiomedBERT-style ``config.json``) with a small timm ViT and a small BERT.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

SAM_IMG = 256
BUMPS = ((4.5, 5.0), (8.0, 11.0), (11.5, 6.0))  # (row, col) on the 16×16 encoder grid


def build_tiny_sam(seed: int = 0):
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    dim, grid = 32, SAM_IMG // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=64, img_size=SAM_IMG, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=4, patch_size=16,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=8,
                                      out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(SAM_IMG, SAM_IMG), mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=8),
                                 transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    enc, dec = sam.image_encoder, sam.mask_decoder
    with torch.no_grad():
        for block in enc.blocks:  # identity blocks: the encoder output is the neck of the positional field
            for lin in (block.attn.proj, block.mlp.lin2):
                lin.weight.zero_()
                lin.bias.zero_()
        enc.patch_embed.proj.weight.zero_()
        enc.patch_embed.proj.bias.zero_()
        yy, xx = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
        field = torch.zeros(grid, grid, 64)
        for c, (r, q) in enumerate(BUMPS):
            field[..., c] = 4.0 * torch.exp(-((yy - r) ** 2 + (xx - q) ** 2) / (2 * 1.5**2))
        field[..., 3] = 1.0
        enc.pos_embed.copy_(field[None])
        enc.neck[0].weight.zero_()
        enc.neck[2].weight.zero_()
        for c in range(4):
            enc.neck[0].weight[c, c, 0, 0] = 1.0
            enc.neck[2].weight[c, c, 1, 1] = 1.0
        sam.prompt_encoder.no_mask_embed.weight.zero_()
        for layer in dec.transformer.layers:
            layer.cross_attn_image_to_token.out_proj.weight.zero_()
            layer.cross_attn_image_to_token.out_proj.bias.zero_()
        up1, up2 = dec.output_upscaling[0], dec.output_upscaling[3]
        up1.weight.zero_()
        up1.bias.zero_()
        up2.weight.zero_()
        up2.bias.zero_()
        for c in range(4):
            up1.weight[c, c] = 1.0
            up2.weight[c, c] = 1.0
        dec.iou_prediction_head.layers[-1].bias.fill_(3.0)
        # the upscaled image embedding is the same for every image: fit each token's mask to one bump
        upscaled = _upscaled(sam)  # [4, 64, 64]
        low = upscaled.shape[-1]
        ly, lx = torch.meshgrid(torch.arange(low, dtype=torch.float32), torch.arange(low, dtype=torch.float32),
                                indexing="ij")
        feats = upscaled.reshape(4, -1).T  # [pixels, 4]
        for k, mlp in enumerate(dec.output_hypernetworks_mlps):
            r, q = BUMPS[k % len(BUMPS)]
            inside = ((ly - 4 * r - 1.5) ** 2 + (lx - 4 * q - 1.5) ** 2) <= (4 * 2.0) ** 2
            target = torch.where(inside.reshape(-1), 12.0, -12.0)
            h = torch.linalg.lstsq(feats, target[:, None]).solution[:, 0]
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.copy_(h)
    return sam


def _upscaled(sam):
    import torch

    image = torch.zeros(1, 3, SAM_IMG, SAM_IMG)
    emb = sam.image_encoder(sam.preprocess(image * 255))
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    src = emb + dense
    pos = sam.prompt_encoder.get_dense_pe()
    tokens = torch.cat([sam.mask_decoder.iou_token.weight, sam.mask_decoder.mask_tokens.weight])[None]
    _, keys = sam.mask_decoder.transformer(src, pos, tokens)
    b, c, h, w = src.shape
    return sam.mask_decoder.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))[0]


def write_tiny_sam(path: Path, seed: int = 0) -> Path:
    """Save the tiny SAM's state dict as an official-format ``.pth``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_tiny_sam(seed).state_dict(), path)
    return path


def phantom_rgb(n: int = 3) -> list[np.ndarray]:
    from medbench.images import open_image
    from medbench.tasks.phantom import PhantomVQA

    samples = PhantomVQA(n_images={"train": 4, "test": 2}).load("train")[:n]
    return [np.asarray(open_image(s.image_path)) for s in samples]


VOCAB_WORDS = ["is", "there", "a", "the", "in", "this", "image", "liver", "lesion", "lung", "left", "right", "what", "modality", "ct", "mri", "x", "ray", "organ", "of", "medical", "abnormal", "normal", "yes", "no", "where", "kidney", "brain", "chest", "heart", "how", "many"]


def write_tiny_biomedclip_download(folder: Path, *, with_tokenizer: bool = True, seed: int = 0) -> Path:
    """A folder in the BiomedCLIP hub layout with random weights: small timm ViT + small BERT.

    ``open_clip_config.json`` names the hub text model as the download does, so it does not load
    offline before ``prepare-biomedclip``; ``config.json`` is the (small) BERT config.
    """
    import json
    import shutil
    import tempfile

    import open_clip
    import torch
    from transformers import BertConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCAB_WORDS,
                                *"abcdefghijklmnopqrstuvwxyz0123456789?.,"]))
    bert = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=256)
    hub = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": hub, "hf_tokenizer_name": hub, "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    with tempfile.TemporaryDirectory() as tmp:  # build the model once from a locally pointed copy of the config
        text_dir = Path(tmp) / "text"
        text_dir.mkdir()
        bert.save_pretrained(text_dir)
        local = json.loads(json.dumps(config))
        local["model_cfg"]["text_cfg"]["hf_model_name"] = str(text_dir)
        local["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = str(text_dir)
        (Path(tmp) / "open_clip_config.json").write_text(json.dumps(local))
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{tmp}", pretrained_text=False)
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
        shutil.copy(text_dir / "config.json", folder / "config.json")
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    if with_tokenizer:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 256}))
        (folder / "special_tokens_map.json").write_text(json.dumps({
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]"}))
    return folder
