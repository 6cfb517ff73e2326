"""A³TUNE hyperparameters (``--method-args`` of ``a3tune``) and the per-task presets of Table 7.

``None`` means "from the task preset": ``preset=paper`` (default) takes the paper's column of the
per-task table, ``preset=ref`` the reference code's. Tasks outside the table (the embedded phantom
tasks) get the paper's report/VQA defaults (O^q=4, O^k=8, B=2, K=4) and a medbench λ.

Trainer settings the paper does not state (``lr_schedule``, ``grad_accum``, ``expert_dropout``)
default to the backbone's (real backbones: the reference code's cosine schedule, effective batch
32, expert dropout 0.05; ``tiny-med-llava``: linear, no accumulation, none); ``preset=ref`` takes the
reference code's on any backbone.

Spec notes: the A³TUNE spec's §5 table writes the effective batch 32 as 4 per device × 8
accumulation; here it is ``batch_size`` 8 × ``grad_accum`` 4 (the same step; ``batch_size=4``
gives 4 × 8). Its experts row omits the reference's dropout 0.05 on each expert ``LoRALayer``'s
input, which ``expert_dropout`` adds (one mask shared by the stacked experts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from medbench.method import MethodArgsError, Range
from medbench.methods.lora import LoRAParams

#: task → (epochs, λ, K, O^q, O^k, B) for the paper and the reference code (spec §5, Table 7).
PAPER: dict[str, tuple[float, float, int, int, int, int]] = {
    "slake": (6, 0.1, 4, 8, 16, 3),
    "vqa-rad": (9, 0.06, 4, 4, 8, 2),
    "pathvqa": (3, 0.02, 4, 8, 16, 3),
    "iu-xray-vqa": (6, 0.12, 4, 4, 8, 2),
    "omnimedvqa": (3, 0.03, 4, 8, 16, 3),
    "iu-xray-report": (12, 0.08, 4, 4, 8, 2),
    "mimic-cxr-report": (12, 0.05, 4, 4, 8, 2),
    "phantom-vqa": (3, 0.1, 4, 4, 8, 2),
    "phantom-report": (3, 0.08, 4, 4, 8, 2),
}
REF: dict[str, tuple[float, float, int, int, int, int]] = {
    "slake": (6, 0.03, 8, 8, 16, 1),
    "vqa-rad": (9, 0.09, 8, 8, 16, 1),
    "pathvqa": (3, 0.02, 8, 8, 16, 1),
    "omnimedvqa": (3, 0.06, 4, 8, 16, 3),
    "iu-xray-report": (12, 0.08, 4, 1, 8, 2),
    "mimic-cxr-report": (12, 0.05, 4, 1, 8, 2),
}
FALLBACK = (3.0, 0.1, 4, 4, 8, 2)
#: Fraction of all L·H heads selected by default: 128 of 1024 (paper §5.4.2).
DEFAULT_HEAD_FRACTION = 0.125


@dataclass(frozen=True)
class A3TuneParams(LoRAParams):
    """Every option of ``a3tune``; defaults are the paper's (``None`` = task preset).

    The LoRA and optimisation options are inherited from the ``lora`` baseline's parameters.
    """

    RANGES: ClassVar[dict[str, Range]] = {
        "qmoe_experts": Range(lo=1), "kmoe_experts": Range(lo=1), "kmoe_top_b": Range(lo=1), "expert_r": Range(lo=1),
        "expert_alpha": Range(lo=1), "router_hidden": Range(lo=1), "moe_balance_coef": Range(0.0, 100.0),
        "lam": Range(0.0, 100.0), "top_heads": Range(lo=0.0), "calib_samples": Range(lo=1), "top_k": Range(lo=1),
        "expert_dropout": Range(0.0, 1.0, hi_open=True),
    }

    preset: Literal["paper", "ref"] = "paper"
    # A³MoE (§4.2.1)
    qmoe: bool = True
    kmoe: bool = True
    qmoe_experts: int | None = None
    kmoe_experts: int | None = None
    kmoe_top_b: int | None = None
    expert_r: int = 16
    expert_alpha: int = 8
    expert_dropout: float | None = None
    q_router: Literal["mlp", "linear"] = "mlp"
    router_hidden: int = 64
    kmoe_gate: Literal["sum", "renorm"] = "sum"
    kmoe_impl: Literal["paper", "ref"] = "paper"
    moe_balance_coef: float = 0.0
    moe_balance: Literal["default", "ref"] = "default"
    # visually-critical heads and alignment (§4.2.2–4.3)
    lam: float | None = None
    top_heads: float | None = None
    head_selection: Literal["per_step", "calibrate"] = "per_step"
    calib_samples: int = 256
    align_reduce: Literal["mean_map", "per_row"] = "mean_map"
    align_loss: Literal["sq", "kl"] = "sq"
    align_rows: Literal["post_image", "answer"] = "post_image"
    align_norm: Literal["sum", "mean"] = "sum"
    # weak labels (§4.1)
    labels: Literal["weak", "gt", "random"] = "weak"
    top_k: int | None = None
    segmenter: str = "auto"
    scorer: str = "auto"
    query: Literal["prompt", "ref"] = "prompt"
    grid_rule: Literal["area50_max", "area50", "nearest_ref", "any"] = "area50_max"
    sam_checkpoint: str | None = None
    sam_arch: Literal["auto", "vit_h", "vit_l", "vit_b"] = "auto"
    sam_input: Literal["rgb", "ref256"] = "rgb"
    biomedclip_dir: str | None = None
    scorer_dir: str | None = None
    # inference
    merge_lora: bool = True

    def validate(self) -> None:
        super().validate()
        if self.kmoe_experts and self.kmoe_top_b and self.kmoe_top_b > self.kmoe_experts:
            raise MethodArgsError(f"kmoe_top_b={self.kmoe_top_b} exceeds kmoe_experts={self.kmoe_experts}")


@dataclass(frozen=True)
class Resolved:
    """Task- and backbone-resolved values that enter training."""

    epochs: float
    lam: float
    top_k: int
    qmoe_experts: int
    kmoe_experts: int
    kmoe_top_b: int
    top_heads: int
    total_heads: int

    @property
    def aligns(self) -> bool:
        return self.lam > 0 and self.top_heads > 0


def resolve_heads(top_heads: float | None, total: int) -> int:
    """R: an int count (clamped to L·H), a fraction in (0, 1) of L·H, or 12.5 % of L·H by default."""
    if top_heads is None:
        return max(1, round(DEFAULT_HEAD_FRACTION * total))
    if top_heads == 0:
        return 0
    if top_heads < 1:
        return max(1, round(top_heads * total))
    return min(int(round(top_heads)), total)


def resolve(params: A3TuneParams, task: Any, num_layers: int, num_heads: int) -> Resolved:
    """Fill ``None`` options from the task preset and the backbone's head count."""
    table = REF if params.preset == "ref" else PAPER
    row = table.get(task.name) or PAPER.get(task.name) or FALLBACK
    epochs, lam, top_k, oq, ok, b = row
    if params.epochs is not None:
        epochs = params.epochs
    elif getattr(task, "tuning_epochs", None) is not None:
        epochs = float(task.tuning_epochs)
    ok = params.kmoe_experts or ok
    b = min(params.kmoe_top_b or b, ok)
    total = num_layers * num_heads
    return Resolved(
        epochs=float(epochs), lam=float(lam if params.lam is None else params.lam), top_k=params.top_k or top_k,
        qmoe_experts=params.qmoe_experts or oq, kmoe_experts=ok, kmoe_top_b=b,
        top_heads=resolve_heads(params.top_heads, total), total_heads=total,
    )
