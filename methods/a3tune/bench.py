"""A³TUNE's configurations for ``medbench bench train`` (``A3Tune.bench_trainers``): A³MoE alone,
full A³TUNE, and A³TUNE with the naive all-heads attention capture, side by side with LoRA."""

from __future__ import annotations

from functools import partial
from typing import Any

from medbench.bench_train import Trainer

# torch, peft and the A³TUNE internals are imported when a trainer is built (bench train only).


def a3tune_trainer(backbone: Any, task: Any, samples: list[Any], *, align: bool, naive: bool = False) -> Trainer:
    """A³TUNE around ``backbone.model`` with ground-truth labels: ``align=False`` is A³MoE alone
    (``lam=0``), ``naive`` captures every head's attention instead of the selected ones."""
    import torch
    from peft import get_peft_model

    from medbench.methods.a3tune.context import A3Hooks, template_suffix
    from medbench.methods.a3tune.method import A3Tune
    from medbench.methods.a3tune.moe import RoutingState, install_a3moe, remove_a3moe
    from medbench.methods.a3tune.objective import AlignObjective, SampleRecorder
    from medbench.methods.a3tune.weak_labels import gt_labels
    from medbench.training import answer_loss

    method = A3Tune(labels="gt", **({} if align else {"lam": 0}))
    p, res = method.params, method.resolved(backbone, task)
    torch.manual_seed(0)
    model = get_peft_model(backbone.model, method.peft_config())
    state = RoutingState()
    install_a3moe(model, method.moe_spec(res, backbone), state)
    recorder = SampleRecorder(backbone, model)
    hooks = A3Hooks(backbone.image_token_id, template_suffix(backbone), state,
                    align_rows=p.align_rows if res.aligns else None).attach(model)
    hooks.all_heads = naive
    objective = None
    if res.aligns:
        grids = gt_labels(samples, backbone.geometry(), p.grid_rule).grids
        objective = AlignObjective(hooks, recorder, state, grids, lam=res.lam, top_r=res.top_heads,
                                   n_heads=int(backbone.text_config.num_attention_heads),
                                   options={"align_reduce": p.align_reduce, "align_loss": p.align_loss,
                                            "align_norm": p.align_norm})

    def loss(out: Any, batch: Any) -> Any:
        ce = answer_loss(out.logits, batch.labels, p.ce_reduction)
        return ce + objective(out, batch) if objective is not None else ce

    def teardown() -> None:
        hooks.detach()
        remove_a3moe(model)
        backbone.model = model.unload()

    notes = {"lam": res.lam, "top_heads": res.top_heads, "total_heads": res.total_heads} if res.aligns else {}
    return Trainer(model, recorder.backbone, loss, teardown, notes)


TRAINERS = {
    "a3moe": partial(a3tune_trainer, align=False),
    "a3tune": partial(a3tune_trainer, align=True),
    "a3tune-naive": partial(a3tune_trainer, align=True, naive=True),
}
