"""Segment proposals for the weak labels (§4.1): SAM, or classical segmenters for the embedded tier.

``Segmenter.segment(rgb_uint8) -> list[Segment]`` returns raw proposals; filtering happens at
scoring time (:func:`keep_segment`) so one segment cache serves every filter. Backends:

- ``sam``: segment-anything's automatic mask generator with the reference settings (the
  ``weak-labels`` extra; a local official-format ``.pth`` via ``sam_checkpoint=``, architecture
  ``sam_arch=auto|vit_h|vit_l|vit_b``, auto = read from the tensor shapes), on the original RGB image
  or, as the reference did, a 256×256 stretch (``sam_input=ref256``).
- ``felzenszwalb`` (scale 200, σ 0.8, min size 0.3 % of the pixels) and ``slic`` (24 segments,
  compactness 10): scikit-image, no downloads; disjoint segments (SAM's overlap and nest).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Reference thresholds as image fractions (spec §1.1).
MIN_REGION = 0.00305
MAX_AREA = 0.61
MIN_SIDE = 0.047
MAX_EDGE = 0.988


@dataclass
class Segment:
    """One proposal in source pixels."""

    mask: np.ndarray
    bbox_xywh: tuple[int, int, int, int]
    area: int
    predicted_iou: float = 1.0
    stability_score: float = 1.0


class Segmenter(Protocol):
    name: str

    def fingerprint(self) -> dict[str, Any]: ...

    def segment(self, rgb: np.ndarray) -> list[Segment]: ...


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return (0, 0, 0, 0)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def from_mask(mask: np.ndarray, predicted_iou: float = 1.0, stability: float = 1.0) -> Segment:
    mask = np.asarray(mask, dtype=bool)
    return Segment(mask, _bbox(mask), int(mask.sum()), float(predicted_iou), float(stability))


def from_label_image(labels: np.ndarray) -> list[Segment]:
    """One segment per label value of a label image (in label order)."""
    return [from_mask(labels == value) for value in np.unique(labels)]


def keep_segment(seg: Segment, width: int, height: int) -> bool:
    """The reference filter (spec §1.1) as image fractions: size, area and border rules."""
    x, y, w, h = seg.bbox_xywh
    if seg.area < MIN_REGION * width * height or seg.area >= MAX_AREA * width * height:
        return False
    if w <= MIN_SIDE * width or h <= MIN_SIDE * height:
        return False
    return not (x == 0 or y == 0 or x + w > MAX_EDGE * width or y + h > MAX_EDGE * height)


@dataclass(frozen=True)
class Felzenszwalb:
    """``skimage.segmentation.felzenszwalb(img, scale, sigma, min_size=min_frac·pixels)``."""

    scale: float = 200.0
    sigma: float = 0.8
    min_frac: float = 0.003
    name: str = "felzenszwalb"

    def fingerprint(self) -> dict[str, Any]:
        return {**asdict(self), "v": 1}

    def segment(self, rgb: np.ndarray) -> list[Segment]:
        from skimage.segmentation import felzenszwalb

        min_size = max(1, int(self.min_frac * rgb.shape[0] * rgb.shape[1]))
        return from_label_image(felzenszwalb(rgb, scale=self.scale, sigma=self.sigma, min_size=min_size))


@dataclass(frozen=True)
class Slic:
    """``skimage.segmentation.slic(img, n_segments, compactness, start_label=1)``."""

    n_segments: int = 24
    compactness: float = 10.0
    name: str = "slic"

    def fingerprint(self) -> dict[str, Any]:
        return {**asdict(self), "v": 1}

    def segment(self, rgb: np.ndarray) -> list[Segment]:
        from skimage.segmentation import slic

        return from_label_image(slic(rgb, n_segments=self.n_segments, compactness=self.compactness, start_label=1))


SAM_SETTINGS = dict(points_per_side=8, points_per_batch=128, pred_iou_thresh=0.5, stability_score_thresh=0.5,
                    box_nms_thresh=0.8, crop_n_layers=1, crop_nms_thresh=0.8, crop_n_points_downscale_factor=2)

#: The three published SAM image encoders (segment-anything's ``build_sam.py``): width, blocks, heads,
#: global-attention blocks. The rest of the geometry is shared: 1024-px input, 16-px patches, 14-px
#: windows, prompt width 256, mask-decoder transformer depth 2 / MLP 2048 / 8 heads, IoU head 3×256.
SAM_ARCHS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
SAM_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
_SHARED = dict(img_size=1024, patch_size=16, window_size=14, prompt_dim=256, mlp_ratio=4.0, qkv_bias=True,
               mask_in_chans=16, multimask=3, decoder_depth=2, decoder_mlp=2048, iou_depth=3, iou_hidden=256)


class WeightFileError(FileNotFoundError):
    """A weight file or folder that is missing, unreadable or not in the expected layout.

    A ``FileNotFoundError`` so the command line prints it as one line (no traceback); the message
    names the file and what was expected there.
    """


def _count(state: dict[str, Any], prefix: str) -> int:
    """Number of consecutive ``prefix{i}.`` modules in a state dict."""
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)
             and k[len(prefix):].split(".", 1)[0].isdigit()}
    return max(found) + 1 if found else 0


def read_sam_state_dict(path: str | Path) -> dict[str, Any]:
    """The tensors of an official-format SAM ``.pth`` (a plain state dict), read with ``weights_only=True``."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"SAM checkpoint {path} not found: expected a segment-anything state dict such as "
                              f"{SAM_FILES['vit_h']}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # mmap needs the zip format; legacy files are read whole
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightFileError(f"SAM checkpoint {path} is not readable as a PyTorch state dict with weights_only=True "
                              f"(truncated or not a .pth of tensors?): {first}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or "image_encoder.patch_embed.proj.weight" not in state:
        raise WeightFileError(f"SAM checkpoint {path} is not a segment-anything SAM state dict: expected tensors "
                              "named image_encoder.*, prompt_encoder.*, mask_decoder.* (as in "
                              f"{SAM_FILES['vit_h']})")
    return state


def sam_geometry(state: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument of a SAM, read from its tensor shapes.

    The only value no tensor records, the mask-decoder transformer's head count, is 8 as in every
    published SAM. Raises ``KeyError``/``IndexError`` on a state dict that lacks a module.
    """
    enc = "image_encoder."
    width, _, patch, _ = state[enc + "patch_embed.proj.weight"].shape
    grid = state[enc + "pos_embed"].shape[1]
    depth = _count(state, enc + "blocks.")
    rel = [state.get(f"{enc}blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    if any(r is None for r in rel):
        raise KeyError("image encoder blocks without relative position tensors (rel_pos_h)")
    head_dim = int(rel[0].shape[1])
    sizes = [(int(r.shape[0]) + 1) // 2 for r in rel]
    global_idx = tuple(i for i, s in enumerate(sizes) if s == grid)
    windows = {s for s in sizes if s != grid}
    dec = "mask_decoder."
    return dict(
        embed_dim=int(width), depth=depth, num_heads=int(width) // head_dim, global_attn_indexes=global_idx,
        window_size=windows.pop() if len(windows) == 1 else (0 if not windows else -1),
        img_size=int(grid) * int(patch), patch_size=int(patch), prompt_dim=int(state[enc + "neck.0.weight"].shape[0]),
        mlp_ratio=state[enc + "blocks.0.mlp.lin1.weight"].shape[0] / int(width),
        qkv_bias=(enc + "blocks.0.attn.qkv.bias") in state,
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        multimask=int(state[dec + "mask_tokens.weight"].shape[0]) - 1,
        decoder_depth=_count(state, dec + "transformer.layers."),
        decoder_mlp=int(state[dec + "transformer.layers.0.mlp.lin1.weight"].shape[0]),
        iou_depth=_count(state, dec + "iou_prediction_head.layers."),
        iou_hidden=int(state[dec + "iou_prediction_head.layers.0.weight"].shape[0]),
    )


def arch_of(geometry: dict[str, Any]) -> str | None:
    """``vit_b``/``vit_l``/``vit_h`` when the geometry is a published SAM's, else None."""
    for arch, (width, depth, heads, global_idx) in SAM_ARCHS.items():
        official = dict(_SHARED, embed_dim=width, depth=depth, num_heads=heads, global_attn_indexes=global_idx)
        if all(geometry.get(k) == v for k, v in official.items()):
            return arch
    return None


def _describe(geometry: dict[str, Any]) -> str:
    return (f"image encoder width {geometry['embed_dim']}, {geometry['depth']} blocks, {geometry['num_heads']} heads, "
            f"{geometry['img_size']}-px input")


def _build_from_geometry(g: dict[str, Any]) -> Any:
    """A SAM of any size from segment-anything's own classes (for checkpoints that are none of the three)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    from segment_anything.modeling import Sam as SamModel

    grid = g["img_size"] // g["patch_size"]
    return SamModel(
        image_encoder=ImageEncoderViT(
            depth=g["depth"], embed_dim=g["embed_dim"], img_size=g["img_size"], mlp_ratio=g["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=g["num_heads"], patch_size=g["patch_size"],
            qkv_bias=g["qkv_bias"], use_rel_pos=True, global_attn_indexes=g["global_attn_indexes"],
            window_size=g["window_size"], out_chans=g["prompt_dim"]),
        prompt_encoder=PromptEncoder(embed_dim=g["prompt_dim"], image_embedding_size=(grid, grid),
                                     input_image_size=(g["img_size"], g["img_size"]), mask_in_chans=g["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=g["multimask"],
            transformer=TwoWayTransformer(depth=g["decoder_depth"], embedding_dim=g["prompt_dim"],
                                          mlp_dim=g["decoder_mlp"], num_heads=8),
            transformer_dim=g["prompt_dim"], iou_head_depth=g["iou_depth"], iou_head_hidden_dim=g["iou_hidden"]),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(checkpoint: str | Path, arch: str = "auto") -> tuple[Any, str]:
    """A SAM from an official-format ``.pth``: (model in eval mode, resolved arch).

    ``arch=auto`` reads the architecture from the tensor shapes: a published one is built through
    ``segment_anything.sam_model_registry``; any other size that uses segment-anything's classes is
    built from them with the geometry the file records (resolved arch ``custom``). An explicit
    ``vit_h``/``vit_l``/``vit_b`` must match the file. Weights are read with ``weights_only=True``
    and loaded strictly; every failure names the file and what was expected.
    """
    if arch != "auto" and arch not in SAM_ARCHS:
        raise ValueError(f"sam_arch={arch!r}: expected auto, vit_h, vit_l or vit_b")
    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:
        raise ImportError("segmenter sam needs the weak-labels extra: pip install 'medbench[weak-labels]' "
                          "(segment-anything, opencv-python-headless)") from exc
    state = read_sam_state_dict(checkpoint)
    try:
        geometry = sam_geometry(state)
    except (KeyError, IndexError, AttributeError) as exc:
        raise WeightFileError(f"SAM checkpoint {checkpoint} is incomplete: a segment-anything SAM state dict has "
                              f"no {exc}") from None
    found = arch_of(geometry)
    if arch != "auto" and found != arch:
        width, depth, heads, _ = SAM_ARCHS[arch]
        what = f"a {found} SAM" if found else "a SAM of another size"
        raise WeightFileError(f"SAM checkpoint {checkpoint} holds {what} ({_describe(geometry)}); sam_arch={arch} "
                              f"expects image encoder width {width}, {depth} blocks, {heads} heads "
                              f"(e.g. {SAM_FILES[arch]}); pass sam_arch={found or 'auto'}")
    model = sam_model_registry[found]() if found else _build_from_geometry(geometry)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WeightFileError(f"SAM checkpoint {checkpoint} does not match the {found or 'custom'} SAM built from its "
                              f"shapes ({_describe(geometry)}): {first}") from None
    return model.eval(), found or "custom"


class Sam:
    """segment-anything's automatic mask generator with the reference settings (spec §1.1)."""

    name = "sam"

    def __init__(self, checkpoint: str | None, arch: str = "auto", input_mode: str = "rgb", device: str = "cpu"):
        from medbench.hashing import sha256_file

        checkpoint = str(Path(checkpoint).expanduser()) if checkpoint else None
        if not checkpoint or not Path(checkpoint).is_file():
            raise WeightFileError(f"segmenter sam needs a local checkpoint file: sam_checkpoint=<path to "
                                  f"{SAM_FILES['vit_h']}> (got {checkpoint!r})")
        try:
            import cv2  # noqa: F401 - the generator's small-region removal imports it at run time
            from segment_anything import SamAutomaticMaskGenerator
        except ImportError as exc:
            raise ImportError("segmenter sam needs the weak-labels extra: pip install 'medbench[weak-labels]' "
                              f"(segment-anything, opencv-python-headless; {exc})") from exc
        self.checkpoint, self.input_mode = checkpoint, input_mode
        model, self.arch = load_sam(checkpoint, arch)
        self._model = model.to(device)
        self._generator_cls = SamAutomaticMaskGenerator
        self._weights = sha256_file(checkpoint)[:16]

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "input": self.input_mode, "settings": SAM_SETTINGS,
                "min_region": MIN_REGION, "weights": self._weights, "v": 1}

    def segment(self, rgb: np.ndarray) -> list[Segment]:
        from PIL import Image

        height, width = rgb.shape[:2]
        image = rgb
        if self.input_mode == "ref256":
            image = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR))[..., ::-1].copy()
        min_area = int(MIN_REGION * image.shape[0] * image.shape[1])
        generator = self._generator_cls(self._model, min_mask_region_area=min_area, **SAM_SETTINGS)
        try:
            found = generator.generate(image)
        except IndexError as exc:  # segment-anything 1.0: no mask in any crop → box_area of an empty tensor
            if not _raised_in(exc, "box_area"):
                raise
            found = []
        out = []
        for m in found:
            mask = m["segmentation"]
            if mask.shape != (height, width):
                mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127
            out.append(from_mask(mask, m.get("predicted_iou", 1.0), m.get("stability_score", 1.0)))
        return out


def _raised_in(exc: BaseException, function: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


def make_segmenter(name: str, *, sam_checkpoint: str | None = None, sam_arch: str = "auto", sam_input: str = "rgb",
                   device: str = "cpu") -> Any:
    """A segmenter by name: ``sam``, ``felzenszwalb`` or ``slic``."""
    if name == "felzenszwalb":
        return Felzenszwalb()
    if name == "slic":
        return Slic()
    if name == "sam":
        return Sam(sam_checkpoint, arch=sam_arch, input_mode=sam_input, device=device)
    raise ValueError(f"unknown segmenter {name!r}; known: sam, felzenszwalb, slic")


def save_segments(path: Path, segments: list[Segment], shape: tuple[int, int]) -> None:
    """Atomic ``.npz``: packed masks [n, H, W], shape, bbox_xywh, area, predicted_iou, stability_score."""
    from medbench.atomic import atomic_write_bytes

    masks = np.stack([s.mask for s in segments]) if segments else np.zeros((0, *shape), dtype=bool)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, masks=np.packbits(masks.reshape(len(segments), -1), axis=1), shape=np.array(shape),
        bbox_xywh=np.array([s.bbox_xywh for s in segments], dtype=np.int64).reshape(-1, 4),
        area=np.array([s.area for s in segments], dtype=np.int64),
        predicted_iou=np.array([s.predicted_iou for s in segments], dtype=np.float32),
        stability_score=np.array([s.stability_score for s in segments], dtype=np.float32),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_segments(path: Path) -> list[Segment]:
    with np.load(path) as data:
        h, w = (int(v) for v in data["shape"])
        n = len(data["area"])
        masks = np.unpackbits(data["masks"], axis=1, count=h * w).reshape(n, h, w).astype(bool)
        return [Segment(masks[i], tuple(int(v) for v in data["bbox_xywh"][i]), int(data["area"][i]),
                        float(data["predicted_iou"][i]), float(data["stability_score"][i])) for i in range(n)]
