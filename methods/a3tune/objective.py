"""The A³TUNE training objective: L = L_LLM + λ·L_align (+ c·L_bal) (Eq. 12).

:class:`AlignObjective` is the ``extra_loss`` of :func:`medbench.training.train_supervised`. It
reads the capture of :class:`~medbench.methods.a3tune.context.A3Hooks`: per sample and step it
picks the top-R heads by r_lh (Eq. 8, computed without autograd during the forward) and
recomputes only their rows with autograd (or takes the calibrated heads' rows), averages them
into M̃ (Eq. 9) and scores it against the sample's grid segments (Eq. 10). Samples are identified through a
:class:`SampleRecorder` (the trainer renders each sample's prompt in batch order); each one is
verified against the batch's token ids.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from medbench.methods.a3tune.align import alignment_loss, select_heads
from medbench.methods.a3tune.context import A3Hooks
from medbench.methods.a3tune.moe import RoutingState
from medbench.types import Sample


class SampleRecorder:
    """A copy of a backbone whose ``prompt_text`` records the samples the trainer batches."""

    def __init__(self, backbone: Any, model: Any):
        self.backbone = copy.copy(backbone)
        self.backbone.model = model
        self._render = self.backbone.prompt_text
        self.backbone.prompt_text = self._record
        self.pending: list[tuple[Sample, list[int]]] = []

    def _record(self, sample: Sample) -> str:
        text = self._render(sample)
        self.pending.append((sample, self.backbone.tokenize_prompt(text)))
        return text

    def take(self, input_ids: torch.Tensor) -> list[Sample]:
        """The samples of the batch just built, checked against its prompt ids."""
        n = input_ids.shape[0]
        chunk, self.pending = self.pending[-n:], []
        if len(chunk) != n:
            raise RuntimeError(f"A³TUNE saw {len(chunk)} recorded prompts for a batch of {n}")
        for row, (sample, ids) in enumerate(chunk):
            if input_ids[row, : len(ids)].tolist() != ids:
                raise RuntimeError(f"A³TUNE could not match batch row {row} to sample {sample.id}")
        return [s for s, _ in chunk]


def label_tensors(grids: dict[str, np.ndarray], samples: list[Sample], n_tokens: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K, N] bool segments and [B, K] validity, padded to the batch's largest K."""
    rows = [grids.get(s.id, np.zeros((0, n_tokens), dtype=bool)) for s in samples]
    k = max(1, max(len(r) for r in rows))
    segs = torch.zeros(len(rows), k, n_tokens, dtype=torch.bool)
    valid = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, r in enumerate(rows):
        if len(r):
            segs[i, : len(r)] = torch.from_numpy(np.asarray(r, dtype=bool))
            valid[i, : len(r)] = True
    return segs.to(device), valid.to(device)


class AlignObjective:
    """``extra_loss(out, batch)``: λ·mean_b L_align(b) + c·L_bal, with running statistics."""

    def __init__(self, hooks: A3Hooks, recorder: SampleRecorder, state: RoutingState, grids: dict[str, np.ndarray], *,
                 lam: float, top_r: int, n_heads: int, options: dict[str, str], balance_coef: float = 0.0,
                 fixed_heads: list[int] | None = None):
        self.hooks, self.recorder, self.state, self.grids = hooks, recorder, state, grids
        self.lam, self.top_r, self.n_heads, self.options = lam, top_r, n_heads, options
        self.balance_coef, self.fixed_heads = balance_coef, fixed_heads
        self.history: list[dict[str, float]] = []
        self.head_counts: dict[int, int] = {}

    def checkpoint_state(self) -> dict[str, Any]:
        """The running statistics, JSON-ready, for a training step checkpoint."""
        return {"history": self.history, "head_counts": [[k, v] for k, v in self.head_counts.items()]}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state["history"]]
        self.head_counts = {int(k): int(v) for k, v in state["head_counts"]}

    def selected_rows(self, cap: Any) -> torch.Tensor:
        """Rows [B, R, Q, N] of the selected heads: the calibrated set, or per-step top-R by r_lh (Eq. 8)."""
        if self.fixed_heads is not None:
            return cap.selected_rows()
        ratio = cap.ratio_matrix()
        heads = select_heads(ratio, min(self.top_r, ratio.shape[1]))
        layers = torch.tensor(cap.layers, device=heads.device)
        for layer_head in (layers[heads // self.n_heads] * self.n_heads + heads % self.n_heads).flatten().tolist():
            self.head_counts[layer_head] = self.head_counts.get(layer_head, 0) + 1
        return cap.recompute(heads)

    def __call__(self, out: Any, batch: Any) -> torch.Tensor:
        total = out.logits.new_zeros(())
        record: dict[str, float] = {}
        if self.lam > 0 and self.top_r > 0:
            cap = self.hooks.last
            if cap is None or not cap.request.layers:
                raise RuntimeError("A³TUNE alignment captured no attention: is the medbench attention installed?")
            samples = self.recorder.take(batch.input_ids)
            rows = self.selected_rows(cap.request).mean(1)
            segs, seg_valid = label_tensors(self.grids, samples, rows.shape[-1], rows.device)
            per_sample = alignment_loss(rows, cap.row_mask, segs, seg_valid, reduce=self.options["align_reduce"],
                                        kind=self.options["align_loss"], norm=self.options["align_norm"])
            align = per_sample.mean()
            total = total + self.lam * align
            record.update(align=float(align.detach()),
                          unlabelled=float((~seg_valid.any(1)).float().mean()))
            self.hooks.last = None
        if self.balance_coef > 0 and self.state.balance:
            bal = torch.stack(self.state.balance).mean()
            total = total + self.balance_coef * bal
            record["balance"] = float(bal.detach())
        self.state.balance.clear()
        self.history.append(record)
        return total

    def summary(self) -> dict[str, Any]:
        def mean(key: str) -> float | None:
            vals = [r[key] for r in self.history if key in r]
            return float(np.mean(vals)) if vals else None

        top = sorted(self.head_counts.items(), key=lambda kv: -kv[1])[:16]
        return {"steps": len(self.history), "align_mean": mean("align"), "unlabelled_mean": mean("unlabelled"),
                "align_first": self.history[0].get("align") if self.history else None,
                "align_last": self.history[-1].get("align") if self.history else None,
                "balance_mean": mean("balance"),
                "most_selected_heads": [{"layer": k // self.n_heads, "head": k % self.n_heads, "count": v} for k, v in top]}


@torch.no_grad()
def calibrate_heads(recorder: SampleRecorder, hooks: A3Hooks, samples: list[Sample], top_r: int, n_heads: int,
                    batch_size: int) -> tuple[list[int], list[float]]:
    """Fixed top-R heads by mean r_lh over ``samples`` with the initial model (``head_selection=calibrate``)."""
    from medbench.training import training_batch

    backbone = recorder.backbone
    model = backbone.model
    was_training = model.training
    model.eval()
    hooks.ratios_only = True
    ratios = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start: start + batch_size]
        batch = training_batch(backbone, chunk, [backbone.load_image(s.image_path) for s in chunk]).to(backbone.device)
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
              position_ids=batch.position_ids)
        recorder.pending = []
        cap = hooks.last
        ratio = cap.request.ratio_matrix()
        ratios.append(ratio[cap.row_mask.any(1)].float().cpu())
        hooks.last = None
    hooks.ratios_only = False
    model.train(was_training)
    mean = torch.cat(ratios).mean(0)
    heads = select_heads(mean[None], top_r)[0].tolist()
    return sorted(int(h) for h in heads), mean.tolist()
