"""A³TUNE (Chang et al.): LoRA + A³MoE fine-tuning with weak-label attention alignment (Eq. 12).

Training: peft LoRA r=64 α16 dropout .05 on every LM linear layer except those A³MoE replaces
(q_proj → Q-MoE, k_proj → K-MoE, expert rank 16), the shared trainer of the ``lora`` baseline
(same optimiser, schedule, batch order and seed), plus λ·L_align over the top-R visually-critical
heads against top-K prompt-aware weak labels. With ``qmoe=off kmoe=off lam=0`` it *is* the LoRA
baseline, step for step. Where the paper is silent the real-backbone trainer follows the
reference code (cosine schedule, effective batch 32 through ``grad_accum``, dropout 0.05 on the
A³MoE experts); ``tiny-med-llava`` keeps linear, no accumulation, no expert dropout; ``preset=ref`` takes
the reference's on any backbone. The checkpoint holds the peft adapter, ``a3moe.safetensors`` (experts
and routers), ``a3tune_config.json`` and ``training.json``; inference keeps A³MoE unmerged and,
by default, merges LoRA (``merge_lora=false``: unmerged, bit-exact with training).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from medbench.hashing import sha256_obj
from medbench.method import TuningMethod
from medbench.methods.a3tune.params import A3TuneParams, Resolved, resolve
from medbench.methods.lora import REFERENCE_TRAINER, checkpointing, tuning_lr, tuning_schedule
from medbench.provenance import package_versions

log = logging.getLogger("medbench")

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALIASES = {"lambda": "lam", "R": "top_heads", "K": "top_k", "B": "kmoe_top_b"}
CONFIG_FILE = "a3tune_config.json"
MOE_FILE = "a3moe.safetensors"


def target_modules(qmoe: bool, kmoe: bool) -> str:
    """peft regex over the language model only (a name list would also hit the CLIP tower)."""
    names = [p for p in PROJECTIONS if not (p == "q_proj" and qmoe) and not (p == "k_proj" and kmoe)]
    return r".*language_model.*\.(" + "|".join(names) + ")"


class A3Tune(TuningMethod):
    """``medbench run --method a3tune --task T``; options in :class:`A3TuneParams`."""

    name = "a3tune"
    label = "A3TUNE"
    block_label = "LoRA"  # its adapters are LoRA: the paper prints A3TUNE rows in the LoRA block
    row_label = "A3TUNE"
    commands = {"weak-labels": "medbench.methods.a3tune.cli"}  # CLI subcommands it provides (module with add_parser)

    @classmethod
    def bench_trainers(cls) -> dict[str, Any]:
        from medbench.methods.a3tune.bench import TRAINERS  # imports medbench.bench_train

        return dict(TRAINERS)
    baseline_decodings = ("greedy",)  # its paper setting
    Params = A3TuneParams
    ALIASES = ALIASES

    # ---- resolution ------------------------------------------------------------------------
    def resolved(self, backbone: Any, task: Any) -> Resolved:
        cfg = backbone.text_config
        return resolve(self.params, task, int(cfg.num_hidden_layers), int(cfg.num_attention_heads))

    def moe_spec(self, res: Resolved, backbone: Any) -> Any:
        from medbench.methods.a3tune.moe import MoESpec

        p = self.params
        return MoESpec(qmoe=p.qmoe, kmoe=p.kmoe, q_experts=res.qmoe_experts, k_experts=res.kmoe_experts,
                       top_b=res.kmoe_top_b, r=p.expert_r, alpha=float(p.expert_alpha), q_router=p.q_router,
                       router_hidden=p.router_hidden, k_gate=p.kmoe_gate, k_impl=p.kmoe_impl, balance=p.moe_balance,
                       dropout=self.expert_dropout_for(backbone))

    def trainer_settings(self, backbone: Any) -> dict[str, Any]:
        """Learning rate, schedule, accumulation and expert dropout on ``backbone`` (``preset=ref``: the
        reference code's; otherwise the user's values, else the backbone's defaults)."""
        schedule, accum = tuning_schedule(self.params, backbone, reference=self.params.preset == "ref")
        return {"lr": self.lr_for(backbone), "lr_schedule": schedule, "grad_accum": accum,
                "expert_dropout": self.expert_dropout_for(backbone)}

    def expert_dropout_for(self, backbone: Any) -> float:
        p = self.params
        if p.expert_dropout is not None:
            return float(p.expert_dropout)
        if p.preset == "ref":
            return float(REFERENCE_TRAINER["expert_dropout"])
        return float(getattr(backbone, "tuning_expert_dropout", 0.0))

    def label_spec(self, task: Any, res: Resolved) -> dict[str, Any] | None:
        """What the weak labels depend on (without running any model)."""
        from medbench.methods.a3tune.weak_labels import auto_backends

        p = self.params
        if not res.aligns:
            return None
        if p.labels == "gt":
            return {"labels": "gt", "grid_rule": p.grid_rule}
        segmenter, scorer = auto_backends(task, p.segmenter, p.scorer)
        spec = {"labels": p.labels, "segmenter": segmenter, "scorer": scorer, "query": p.query, "top_k": res.top_k,
                "grid_rule": p.grid_rule}
        if scorer == "clip_small":
            from medbench.methods.a3tune.scorers import default_scorer_dir

            spec["scorer_dir"] = str(Path(p.scorer_dir).name if p.scorer_dir else default_scorer_dir().name)
        if segmenter == "sam":
            spec.update(sam=Path(p.sam_checkpoint or "").name, sam_input=p.sam_input, sam_arch=p.sam_arch)
        if scorer == "biomedclip":
            spec["biomedclip"] = Path(p.biomedclip_dir or "").name
        return spec

    def fingerprint(self, backbone: Any, task: Any, seed: int) -> str:
        res = self.resolved(backbone, task)
        # sam_arch enters through the label spec (only when SAM segments), so other runs keep their fingerprints
        inference = {"merge_lora", "sam_arch"} | self.OPERATIONAL
        return sha256_obj({
            "method": self.name, "params": {k: v for k, v in dataclasses.asdict(self.params).items() if k not in inference},
            "resolved": dataclasses.asdict(res), "labels": self.label_spec(task, res),
            "backbone": backbone.checkpoint_id, "task": task.name, "task_version": task.version,
            "split": task.train_split, "seed": seed, "template": backbone.template.prompt,
            "lr": self.lr_for(backbone), "trainer": self.trainer_settings(backbone),
        })

    def lr_for(self, backbone: Any) -> float:
        """The paper's 2e-4 unless the backbone sets another default (tiny-med-llava: 2e-3), as for ``lora``."""
        return tuning_lr(self.params.lr, backbone)

    def peft_config(self) -> Any:
        from peft import LoraConfig

        p = self.params
        return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout,
                          target_modules=target_modules(p.qmoe, p.kmoe), bias="none")

    # ---- labels ----------------------------------------------------------------------------
    def build_labels(self, backbone: Any, task: Any, samples: list[Any], res: Resolved, progress: bool = True,
                     seed: int = 0) -> Any:
        """Grid segments of the training samples (``labels=weak|gt|random``; ``random`` moves every weak
        segment to a random place, seeded by ``seed`` and the sample id: the control for what the labels' places are worth)."""
        from medbench.methods.a3tune.weak_labels import gt_labels, random_labels, weak_labels

        geometry = backbone.geometry()
        if self.params.labels == "gt":
            return gt_labels(samples, geometry, self.params.grid_rule)
        weak = weak_labels(self.labeler(task, backbone, progress), task.name, task.train_split, samples, geometry,
                           res.top_k, self.params.grid_rule)
        return random_labels(weak, int(geometry["grid_size"]), seed) if self.params.labels == "random" else weak

    def labeler(self, task: Any, backbone: Any = None, progress: bool = True) -> Any:
        from medbench.methods.a3tune.scorers import make_scorer
        from medbench.methods.a3tune.segmenters import make_segmenter
        from medbench.methods.a3tune.weak_labels import WeakLabeler, auto_backends

        p = self.params
        device = str(backbone.device) if backbone is not None else "cpu"
        seg_name, scorer_name = auto_backends(task, p.segmenter, p.scorer)
        segmenter = make_segmenter(seg_name, sam_checkpoint=p.sam_checkpoint, sam_arch=p.sam_arch,
                                   sam_input=p.sam_input, device=device)
        scorer = make_scorer(scorer_name, scorer_dir=p.scorer_dir, biomedclip_dir=p.biomedclip_dir, device=device,
                             progress=progress)
        return WeakLabeler(segmenter, scorer, p.query, progress)

    # ---- training --------------------------------------------------------------------------
    def train(self, backbone: Any, task: Any, out_dir: Path, seed: int, device: str) -> Path:
        import torch
        from peft import get_peft_model

        from medbench.atomic import atomic_write_json
        from medbench.ddp import is_main_process, main_first, world_size
        from medbench.methods.a3tune.capture import heads_by_layer
        from medbench.methods.a3tune.context import A3Hooks, template_suffix
        from medbench.methods.a3tune.moe import RoutingState, install_a3moe, remove_a3moe
        from medbench.methods.a3tune.objective import AlignObjective, SampleRecorder, calibrate_heads
        from medbench.methods.a3tune.quality import token_quality
        from medbench.training import train_supervised
        from medbench.zero import requested as deepspeed_requested

        p = self.params
        samples = task.load(task.train_split)
        if p.train_limit is not None:
            samples = samples[: p.train_limit]
        res = self.resolved(backbone, task)
        if p.top_heads is not None and p.top_heads > res.total_heads:
            log.warning("top_heads=%s exceeds the backbone's %d heads; using R=%d", p.top_heads, res.total_heads,
                        res.top_heads)
        labels = main_first(lambda: self.build_labels(backbone, task, samples, res, seed=seed)) if res.aligns else None
        spec = self.moe_spec(res, backbone)
        trainer = self.trainer_settings(backbone)
        steps = checkpointing(self, backbone, task, out_dir, seed)
        torch.manual_seed(seed)
        model = get_peft_model(backbone.model, self.peft_config())
        state = RoutingState(collect_balance=p.moe_balance_coef > 0 and p.kmoe)
        if p.qmoe or p.kmoe:
            install_a3moe(model, spec, state)
        recorder = SampleRecorder(backbone, model)
        hooks = objective = None
        fixed = ratios = None
        n_heads = int(backbone.text_config.num_attention_heads)
        if p.qmoe or p.kmoe or res.aligns:
            hooks = A3Hooks(backbone.image_token_id, template_suffix(backbone), state,
                            align_rows=p.align_rows if res.aligns else None).attach(model)
        try:
            if res.aligns and p.head_selection == "calibrate":
                fixed, ratios = calibrate_heads(recorder, hooks, samples[: p.calib_samples], res.top_heads, n_heads,
                                                p.batch_size)
                hooks.fixed = heads_by_layer(fixed, n_heads)
            if res.aligns or state.collect_balance:
                objective = AlignObjective(
                    hooks, recorder, state, labels.grids if labels else {}, lam=res.lam if res.aligns else 0.0,
                    top_r=res.top_heads, n_heads=n_heads, balance_coef=p.moe_balance_coef, fixed_heads=fixed,
                    options={"align_reduce": p.align_reduce, "align_loss": p.align_loss, "align_norm": p.align_norm})
            losses = train_supervised(
                recorder.backbone, samples, epochs=res.epochs, batch_size=p.batch_size, lr=trainer["lr"], seed=seed,
                desc=f"a3tune {task.name}", ce_reduction=p.ce_reduction, extra_loss=objective, checkpoint=steps,
                grad_accum=trainer["grad_accum"], lr_schedule=trainer["lr_schedule"],
            )
            if is_main_process():
                save_checkpoint(model, out_dir)
        finally:
            if hooks is not None:
                hooks.detach()
            remove_a3moe(model)
            backbone.model = model.unload()
        if not is_main_process():
            return out_dir
        record: dict[str, Any] = {"losses": losses, "n_samples": len(samples), "params": dataclasses.asdict(p),
                                  "resolved": dataclasses.asdict(res), "trainer": trainer, "alignment": objective.summary() if objective else None,
                                  "world_size": world_size(), "deepspeed": deepspeed_requested()}
        if labels is not None:
            record["labels"] = labels.summary()
            record["weak_label_quality"] = token_quality(labels, samples, backbone.geometry(), p.grid_rule)
        atomic_write_json(out_dir / "training.json", record)
        atomic_write_json(out_dir / CONFIG_FILE, {
            "method_args": dataclasses.asdict(p), "resolved": dataclasses.asdict(res), "moe": dataclasses.asdict(spec),
            "span_rule": "after the image to the end of the template suffix", "label_spec": self.label_spec(task, res),
            "heads": fixed, "versions": package_versions(("torch", "transformers", "peft")),
        })
        if fixed is not None:
            atomic_write_json(out_dir / "heads.json", {"heads": [{"layer": h // n_heads, "head": h % n_heads} for h in fixed],
                                                       "mean_ratio": ratios})
        return out_dir

    # ---- inference -------------------------------------------------------------------------
    def apply(self, backbone: Any, checkpoint: Path) -> Any:
        import copy

        from peft import PeftModel
        from safetensors.torch import load_file

        from medbench.methods.a3tune.context import A3Hooks, template_suffix
        from medbench.methods.a3tune.moe import MoESpec, RoutingState, install_a3moe, load_a3moe_state_dict

        config = json.loads((Path(checkpoint) / CONFIG_FILE).read_text())
        model = PeftModel.from_pretrained(backbone.model, str(checkpoint), is_trainable=False)
        if self.params.merge_lora:
            model = model.merge_and_unload()
        spec = MoESpec(**config["moe"])
        state = RoutingState()
        if spec.qmoe or spec.kmoe:
            install_a3moe(model, spec, state)
            load_a3moe_state_dict(model, load_file(str(Path(checkpoint) / MOE_FILE)))
            A3Hooks(backbone.image_token_id, template_suffix(backbone), state).attach(model)
        model.eval()
        tuned = copy.copy(backbone)
        tuned.model = model
        tuned.checkpoint_id = f"{backbone.checkpoint_id}+a3tune:{Path(checkpoint).name}"
        return tuned


def save_checkpoint(model: Any, out_dir: Path) -> None:
    """The peft adapter (LoRA only) and ``a3moe.safetensors`` (experts and routers)."""
    from safetensors.torch import save_file

    from medbench.methods.a3tune.moe import a3moe_state_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_file(a3moe_state_dict(model), str(out_dir / MOE_FILE))
