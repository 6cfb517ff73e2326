"""``clip_small``: a tiny CLIP-style dual encoder trained by medbench on phantom data.

Image tower: three stride-2 convolutions on 32×32 segment crops (``CROP``, bilinear) → global pool → linear; text
tower: hashed word uni- and bigrams → mean embedding → MLP; both L2-normalised, a learnable
temperature (CLIP). Training pairs are GT-RoI crops (image × mask, cut to the mask box, on
black — the reference's crop) with their question; classical-segmenter proposals that barely
overlap the RoI are added as extra negatives. Symmetric InfoNCE with soft targets over
identical questions. Stored as a local folder: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from medbench.console import progress_bars_enabled

CROP = 32
VERSION = 2


def crop_segment(rgb: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The reference crop: image × mask, cut to the mask's bounding box, on black."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return Image.new("RGB", (1, 1))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    cut = rgb[y0:y1, x0:x1] * mask[y0:y1, x0:x1, None]
    return Image.fromarray(cut.astype(np.uint8))


def word_ids(text: str, buckets: int) -> list[int]:
    """Stable hashed ids of the lower-cased words and word bigrams."""
    words = re.findall(r"[a-z0-9\-]+", text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [zlib.crc32(g.encode()) % buckets for g in grams] or [0]


class TinyClip(nn.Module):
    """Dual encoder with a shared embedding size ``dim``."""

    def __init__(self, dim: int = 128, buckets: int = 4096, width: int = 16):
        super().__init__()
        self.config = {"dim": dim, "buckets": buckets, "width": width, "version": VERSION}
        self.image = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.GELU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, dim),
        )
        self.words = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.text = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @staticmethod
    def pixels(crops: list[Image.Image]) -> torch.Tensor:
        arrays = [np.asarray(c.convert("RGB").resize((CROP, CROP), Image.BILINEAR), dtype=np.float32) for c in crops]
        return ((torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5) - 1.0).contiguous()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pixels), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = [word_ids(t, self.config["buckets"]) for t in texts]
        flat = torch.tensor([i for row in ids for i in row])
        offsets = torch.tensor([0] + [len(r) for r in ids[:-1]]).cumsum(0)
        return F.normalize(self.text(self.words(flat, offsets)), dim=-1)

    @torch.no_grad()
    def score(self, crops: list[Image.Image], text: str) -> np.ndarray:
        """100 · cos(E_s, E_P) for each crop (Eq. 3's similarity)."""
        if not crops:
            return np.zeros(0, dtype=np.float32)
        sims = self.encode_image(self.pixels(crops)) @ self.encode_text([text])[0]
        return (100.0 * sims).numpy().astype(np.float32)

    def save(self, folder: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**self.config, "meta": meta}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> TinyClip:
        from safetensors.torch import load_file

        config = json.loads((folder / "config.json").read_text())
        model = cls(config["dim"], config["buckets"], config["width"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.eval()


def contrastive_loss(model: TinyClip, pixels: torch.Tensor, texts: list[str], n_pos: int) -> torch.Tensor:
    """Symmetric InfoNCE; images past ``n_pos`` are negatives only; identical texts share targets."""
    img = model.encode_image(pixels)
    txt = model.encode_text(texts)
    logits = model.logit_scale.exp().clamp(max=100) * txt @ img.T
    same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
    target_t = torch.cat([same, torch.zeros(len(texts), img.shape[0] - n_pos)], 1)
    target_t = target_t / target_t.sum(1, keepdim=True)
    loss_t = -(target_t * logits.log_softmax(-1)).sum(1).mean()
    target_i = same / same.sum(1, keepdim=True)
    loss_i = -(target_i * logits[:, :n_pos].T.log_softmax(-1)).sum(1).mean()
    return (loss_t + loss_i) / 2


def train_tiny_clip(pairs: list[tuple[Image.Image, str]], negatives: list[Image.Image], *, steps: int = 400,
                    batch_size: int = 64, lr: float = 2e-3, seed: int = 0, progress: bool = True) -> TinyClip:
    """Train on (crop, question) pairs plus negative-only crops."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TinyClip()
    pos_pixels = TinyClip.pixels([c for c, _ in pairs])
    neg_pixels = TinyClip.pixels(negatives) if negatives else torch.zeros(0, 3, CROP, CROP)
    texts = [t for _, t in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for _ in tqdm(range(steps), desc="clip_small", disable=not (progress and progress_bars_enabled()), unit="step"):
        idx = rng.choice(len(pairs), size=min(batch_size, len(pairs)), replace=False)
        pix = pos_pixels[idx]
        if len(neg_pixels):
            nidx = rng.choice(len(neg_pixels), size=min(len(idx), len(neg_pixels)), replace=False)
            pix = torch.cat([pix, neg_pixels[nidx]])
        loss = contrastive_loss(model, pix, [texts[i] for i in idx], len(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
