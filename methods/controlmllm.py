"""ControlMLLM — training-free visual prompt learning (Wu et al., NeurIPS 2024).

A latent ``P ∈ R^{N×D}`` (zero at start) is added to the post-projector image embeddings ``E`` and
optimised at inference so that the prompt's attention falls inside the sample's RoI. With
``P̃_{−1} = 0``, for t = 0 … T−1 (ControlMLLM Eq. 3–5):

* EMA ``P̃_t = β·P_t + (1−β)·P̃_{t−1}``; prefill ``E + P̃_t`` with gradient tracked for ``P_t`` only;
* relevance ``r = mean_{layers,heads} mean_{i∈Q} A[i, image]`` over the prompt rows Q after the
  image (differentiable capture through the medbench attention function);
* energy ``L_t = α·(1 − Σ r·m / Σ r)²`` with the RoI ``m`` rasterised (nearest, cell centres) onto
  the token grid through the backbone geometry;
* early stop: t ≥ 1 and ``|L_t − L_0| > 0.25·L_0`` → ``P̃* = P̃_t``; else ``P_{t+1} = P_t − η∇L_t``.

Without an early stop ``P̃* = β·P_T + (1−β)·P̃_{T−1}``; the answer is decoded greedily from
``E + P̃*``. Samples are optimised together; each gradient depends only on its own ``P``.
Every sample needs an RoI: the method refuses a task without RoIs (:class:`MissingRoIError`).

Defaults (A³TUNE paper App. B): β=0.5, α=400, T=5, early stop on, greedy; ``lr`` left unset is
the backbone's ``controlmllm_lr`` (η=4 for LLaVA-Med v1, 1 for LLaVA-Med v1.5 and every other
backbone), and the resolved value is recorded in the run's ``method_args``.

Variant ``reference`` reproduces the loop of the reference ``llava_roc.py``:

* the embeddings tensor is aliased and updated in place (``inputs_embeds +=``), so the offsets
  accumulate: step t prefills ``E + Σ_{s≤t} P̃_s``;
* the EMA history starts as the very Parameter ``P_0`` (``vprompt_history = visual_prompt``), so
  ``P̃_0 = β·P_0 + (1−β)·P_0`` has gradient ``1·∂L/∂E`` instead of ``β·∂L/∂E``: the first step is
  ``1/β`` times (twice, at β=0.5) the default's;
* on an early stop at step t the latest ``P̃_t`` has already been added in place before the
  ``break`` and is added again after the loop: the answer decodes from ``E + Σ_{s≤t} P̃_s + P̃_t``
  (without an early stop ``E + Σ_{s<T} P̃_s + P̃*``).

The reference decodes ``generate(30)`` per step but uses only the prefill attention; medbench
runs the prefill alone (same loss). T=0, lr=0 or α=0 reduce to greedy.

Spec notes: the decoding spec's "medbench defaults … ControlMLLM lr=1" holds for LLaVA-Med v1.5
only (App. B: v1 uses 4), and its quirk list names only the accumulating offsets; the first-step
and early-stop differences above are the reference's too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from medbench.attention import CaptureRequest, capture
from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Branch, Generation, decode_loop, encode_images, grad_enabled, image_inputs
from medbench.method import MethodArgsError, Range
from medbench.methods.contrastive import BaselineDecoding, DecodingParams, image_positions


class MissingRoIError(MethodArgsError):
    """ControlMLLM was asked to decode a sample without a region of interest."""


@dataclass(frozen=True)
class ControlMLLMParams(DecodingParams):
    BASE: ClassVar[dict] = {"selection": "greedy"}
    PRESETS: ClassVar[dict] = {"reference": {}}
    #: α scales the attention energy (paper 400), β is the EMA weight of the latent.
    RANGES: ClassVar[dict[str, Range]] = {"alpha": Range(0.0, 1e4), "lr": Range(0.0, 1e3), "steps": Range(0, 100),
                                          "stop_ratio": Range(0.0, 1e3, lo_open=True)}

    variant: Literal["default", "reference"] = "default"
    beta: float = 0.5
    alpha: float = 400.0
    lr: float | None = None
    steps: int = 5
    early_stop: bool = True
    stop_ratio: float = 0.25


def roi_grid(backbone: Backbone, roi: Any, image_size: tuple[int, int]) -> np.ndarray:
    """The RoI on the G×G token grid (row-major like the tokens), nearest at cell centres."""
    mask = np.asarray(backbone.roi_in_input_frame(roi, image_size), dtype=bool)
    g = backbone.grid_size
    h, w = mask.shape
    rows = ((np.arange(g) + 0.5) * h / g).astype(int).clip(0, h - 1)
    cols = ((np.arange(g) + 0.5) * w / g).astype(int).clip(0, w - 1)
    grid = mask[np.ix_(rows, cols)]
    if not grid.any():
        grid = backbone.roi_to_grid(roi, image_size) > 0
    return grid.astype(np.float32).reshape(-1)


def energy(relevance: torch.Tensor, roi: torch.Tensor, alpha: float) -> torch.Tensor:
    """``α·(1 − Σ r·m / Σ r)²`` per sample (ControlMLLM Eq. 4)."""
    inside = (relevance * roi).sum(-1) / relevance.sum(-1).clamp_min(torch.finfo(relevance.dtype).tiny)
    return alpha * (1 - inside) ** 2


class ControlMLLM(BaselineDecoding):
    name = "controlmllm"
    label = "ControlMLLM"
    Params = ControlMLLMParams

    def step_size(self, backbone: Backbone) -> float:
        """η: the user's ``lr``, else the backbone's ``controlmllm_lr`` (App. B: v1 4, v1.5 1)."""
        lr = self.params.lr
        return float(lr if lr is not None else getattr(backbone, "controlmllm_lr", 1.0))

    def bind(self, backbone: Backbone) -> None:
        """Resolve the backbone-dependent default (η) so that :meth:`resolved_args` records it."""
        self._lr = self.step_size(backbone)

    def resolved_args(self) -> dict[str, Any]:
        args = super().resolved_args()
        if args["lr"] is None and getattr(self, "_lr", None) is not None:
            args["lr"] = self._lr
        return args

    @classmethod
    def supports(cls, task: Any) -> bool:
        """VQA only: the steering region is the one a question refers to; a report has no question."""
        return task.kind == "vqa"

    def check_samples(self, samples: list[Any]) -> None:
        missing = [s.id for s in samples if getattr(s, "roi", None) is None]
        if missing:
            raise MissingRoIError(f"controlmllm needs a region of interest for every sample; "
                                  f"{len(missing)} sample(s) have none (e.g. {', '.join(missing[:3])})")

    def prepare(self, backbone: Backbone, samples: list[Any], images: list[Any]) -> None:
        self.check_samples(samples)
        self._grids = np.stack([roi_grid(backbone, s.roi, im.size) for s, im in zip(samples, images)])

    def relevance(self, backbone: Backbone, ids: torch.Tensor, mask: torch.Tensor, features: torch.Tensor
                  ) -> torch.Tensor:
        """Differentiable [B, N] head/layer/row-mean attention of the post-image prompt rows."""
        span = image_positions(backbone, ids)
        width = ids.shape[1]
        after = width - 1 - span[:, -1]  # rows after the image, per sample
        n_q = int(after.max())
        if n_q == 0:
            raise ValueError("controlmllm needs prompt tokens after the image (the query rows Q)")
        offsets = torch.arange(n_q, device=ids.device)[None]
        valid = (offsets < after[:, None]).float()
        queries = torch.minimum(span[:, -1:] + 1 + offsets, torch.full_like(offsets, width - 1))
        request = CaptureRequest(query_positions=queries, key_positions=span)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        with capture(request):
            backbone.model(input_ids=ids, attention_mask=mask, position_ids=position, logits_to_keep=1,
                           **image_inputs(features.reshape(-1, features.shape[-1])))
        heads = int(backbone.text_config.num_attention_heads)
        attn = torch.stack([request.captured[i][:, 0].float() for i in sorted(request.captured)]).mean(0) / heads
        return (attn * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)

    def optimise(self, backbone: Backbone, batch: EncodedBatch, roi: torch.Tensor) -> torch.Tensor:
        """``E + P̃*`` after the latent updates (``reference``: the reference loop's offsets, see above)."""
        p = self.params
        lr = self.step_size(backbone)
        ids, mask = batch.input_ids.clone(), batch.attention_mask.clone()
        base = encode_images(backbone.model, batch.pixel_values.clone()).detach()
        latent = torch.zeros_like(base, requires_grad=True)
        reference = p.variant == "reference"
        previous = latent if reference else torch.zeros_like(base)
        total = torch.zeros_like(base)
        final = torch.zeros_like(base)
        done = torch.zeros(base.shape[0], dtype=torch.bool, device=base.device)
        first: torch.Tensor | None = None
        for t in range(p.steps):
            ema = p.beta * latent + (1 - p.beta) * previous
            offset = total + ema if reference else ema
            loss = energy(self.relevance(backbone, ids, mask, base + offset), roi, p.alpha)
            first = loss.detach() if first is None else first
            if t >= 1 and p.early_stop:
                stop = ~done & ((loss.detach() - first).abs() > p.stop_ratio * first)
                kept = offset + ema if reference else offset
                final[stop] = kept.detach()[stop]
                done |= stop
                if bool(done.all()):
                    break
            (grad,) = torch.autograd.grad(loss.sum(), latent)
            with torch.no_grad():
                latent = (latent - lr * grad).requires_grad_(True)
            previous = ema.detach()
            total = total + previous
        end = (p.beta * latent + (1 - p.beta) * previous).detach()
        end = total + end if reference else end
        final[~done] = end[~done]
        return (base + final).detach()

    def generate(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int], max_new_tokens: int) -> Generation:
        grids = getattr(self, "_grids", None)
        if grids is None or len(grids) != batch.input_ids.shape[0]:
            raise MissingRoIError("controlmllm needs each sample's RoI: call prepare(backbone, samples, images) "
                                  "first (the runner does)")
        batch = batch.to(backbone.device)
        with grad_enabled():
            roi = torch.as_tensor(grids, device=backbone.device)
            self._features = self.optimise(backbone, batch, roi)
        self._grids = None
        return decode_loop(self, backbone, batch, seeds, max_new_tokens)

    def branches(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> list[Branch]:
        return [Branch("main", batch.input_ids, batch.attention_mask, image_features=self._features)]
