"""LoRA fine-tuning (Hu et al., 2021) of the language model — the paper's "+ LoRA" baseline.

peft LoRA r=64, α=16, dropout 0.05 on every linear projection of the language model
(q/k/v/o/gate/up/down; a regex keeps the CLIP tower's q/k/v out), learning rate 2e-4
(paper Appendix C) for real backbones. ``lr`` left unset takes the backbone's
``default_tuning_lr``: 2e-4 for real models, 2e-3 for the 4 M-parameter ``tiny-med-llava``,
on which 2e-4 left the phantom-vqa scores unchanged after 3 epochs. The vision tower, projector,
embeddings and head stay frozen. The adapter is cached by a training fingerprint and reused by
later runs.

Where the paper is silent the real-backbone defaults are the A³TUNE reference code's (its LoRA
baseline shares the trainer): ``lr_schedule=cosine`` (transformers' cosine with 3 % warm-up) and
an effective batch of 32, i.e. ``grad_accum`` = 32 / ``batch_size`` (4 at the default batch 8).
``tiny-med-llava`` keeps what the embedded tier was tuned with: linear warm-up/decay and no
accumulation (a step is one ``batch_size`` batch; the base ``Backbone``'s values). Both come from
backbone attributes (``tuning_lr_schedule``, ``tuning_effective_batch``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from medbench.atomic import atomic_write_text
from medbench.hashing import sha256_obj
from medbench.method import MethodArgsError, Range, TuningMethod

TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def training_params(params: Any, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The parameters a trained adapter depends on (no operational options such as ``checkpoint_every``)."""
    return {k: v for k, v in asdict(params).items() if k not in TuningMethod.OPERATIONAL | exclude}


def checkpointing(method: TuningMethod, backbone: Any, task: Any, out_dir: Path, seed: int) -> Any:
    """Step checkpoints in ``out_dir/state`` every ``checkpoint_every`` steps, keyed by the fingerprint."""
    from medbench.train_state import STATE_DIR
    from medbench.training import Checkpointing

    return Checkpointing(Path(out_dir) / STATE_DIR, method.params.checkpoint_every,
                         method.fingerprint(backbone, task, seed))


def tuning_lr(lr: float | None, backbone: Any) -> float:
    """The user's learning rate, else the backbone's ``default_tuning_lr`` (paper: 2e-4)."""
    return lr if lr is not None else float(getattr(backbone, "default_tuning_lr", 2e-4))


#: The A³TUNE reference code's trainer settings: cosine schedule, effective batch 32, expert dropout 0.05.
REFERENCE_TRAINER = {"lr_schedule": "cosine", "effective_batch": 32, "expert_dropout": 0.05}


def tuning_schedule(params: Any, backbone: Any, reference: bool = False) -> tuple[str, int]:
    """``(lr_schedule, grad_accum)``: the user's values, else the backbone's defaults (``reference``:
    the reference code's), the accumulation reaching the effective batch from ``batch_size``."""
    schedule = params.lr_schedule or (REFERENCE_TRAINER["lr_schedule"] if reference
                                      else getattr(backbone, "tuning_lr_schedule", "linear"))
    effective = (REFERENCE_TRAINER["effective_batch"] if reference
                 else getattr(backbone, "tuning_effective_batch", None))
    if params.grad_accum is not None:
        return schedule, params.grad_accum
    return schedule, 1 if effective is None else max(1, -(-int(effective) // params.batch_size))


@dataclass(frozen=True)
class LoRAParams:
    RANGES: ClassVar[dict[str, Range]] = {
        "r": Range(lo=1), "alpha": Range(lo=1), "dropout": Range(0.0, 1.0, hi_open=True),
        "lr": Range(0.0, 1.0, lo_open=True), "epochs": Range(0.0, 1000.0, lo_open=True), "batch_size": Range(lo=1),
        "train_limit": Range(lo=1), "checkpoint_every": Range(lo=0), "grad_accum": Range(1, 4096),
    }

    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    lr: float | None = None
    lr_schedule: Literal["cosine", "linear"] | None = None
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int | None = None
    ce_reduction: str = "per_sample"
    train_limit: int | None = None
    checkpoint_every: int = 50

    def validate(self) -> None:
        if self.ce_reduction not in ("per_sample", "token"):
            raise MethodArgsError("ce_reduction must be per_sample or token")


class LoRA(TuningMethod):
    name = "lora"
    label = "LoRA"
    block_label = "LoRA"
    Params = LoRAParams

    def epochs_for(self, task: Any) -> float:
        return self.params.epochs if self.params.epochs is not None else float(getattr(task, "tuning_epochs", 3))

    def lr_for(self, backbone: Any) -> float:
        return tuning_lr(self.params.lr, backbone)

    def schedule_for(self, backbone: Any) -> tuple[str, int]:
        """``(lr_schedule, grad_accum)`` on ``backbone`` (:func:`tuning_schedule`)."""
        return tuning_schedule(self.params, backbone)

    def fingerprint(self, backbone: Any, task: Any, seed: int) -> str:
        return sha256_obj({
            "method": self.name, "params": training_params(self.params), "epochs": self.epochs_for(task),
            "lr": self.lr_for(backbone), "schedule": self.schedule_for(backbone),
            "backbone": backbone.checkpoint_id, "task": task.name, "task_version": task.version,
            "split": task.train_split, "seed": seed, "template": backbone.template.prompt,
        })

    @classmethod
    def bench_trainers(cls) -> dict[str, Any]:
        return {"lora": bench_trainer}

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.params.r, lora_alpha=self.params.alpha, lora_dropout=self.params.dropout,
                          target_modules=TARGET_MODULES, bias="none")

    def train(self, backbone: Any, task: Any, out_dir: Path, seed: int, device: str) -> Path:
        import torch
        from peft import get_peft_model

        from medbench.training import train_supervised

        samples = task.load(task.train_split)
        if self.params.train_limit is not None:
            samples = samples[: self.params.train_limit]
        from medbench.ddp import is_main_process, world_size
        from medbench.zero import requested as deepspeed_requested

        steps = checkpointing(self, backbone, task, out_dir, seed)
        schedule, accum = self.schedule_for(backbone)
        torch.manual_seed(seed)
        model = get_peft_model(backbone.model, self.peft_config())
        tuned = type(backbone)(model, backbone.processor, backbone.template, checkpoint_id=backbone.checkpoint_id)
        losses = train_supervised(
            tuned, samples, epochs=self.epochs_for(task), batch_size=self.params.batch_size,
            lr=self.lr_for(backbone), seed=seed, desc=f"lora {task.name}", ce_reduction=self.params.ce_reduction,
            checkpoint=steps, grad_accum=accum, lr_schedule=schedule,
        )
        if is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out_dir)
            atomic_write_text(out_dir / "training.json", json.dumps(
                {"losses": losses, "n_samples": len(samples), "params": asdict(self.params),
                 "lr": self.lr_for(backbone), "lr_schedule": schedule, "grad_accum": accum,
                 "world_size": world_size(), "deepspeed": deepspeed_requested()},
                indent=1))
        backbone.model = model.unload() if hasattr(model, "unload") else model.base_model.model
        return out_dir

    def apply(self, backbone: Any, checkpoint: Path) -> Any:
        from peft import PeftModel

        model = PeftModel.from_pretrained(backbone.model, str(checkpoint), is_trainable=False)
        model.eval()
        return type(backbone)(model, backbone.processor, backbone.template,
                              checkpoint_id=f"{backbone.checkpoint_id}+lora:{checkpoint.name}")


def bench_trainer(backbone: Any, task: Any, samples: list[Any]) -> Any:
    """``medbench bench train``'s ``lora`` configuration: LoRA around ``backbone.model``, answer loss."""
    import torch
    from peft import get_peft_model

    from medbench.bench_train import Trainer
    from medbench.training import answer_loss

    torch.manual_seed(0)
    model = get_peft_model(backbone.model, LoRA().peft_config())

    def teardown() -> None:
        backbone.model = model.unload()

    return Trainer(model, backbone, lambda out, batch: answer_loss(out.logits, batch.labels), teardown)
