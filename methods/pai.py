"""PAI — Paying More Attention to Image (Liu et al., ECCV 2024).

* Amplification (PAI Eq. 4): in LLM layers ``start_layer … end_layer−1`` (end excluded), on the
  **last query row only**, the pre-softmax scores (after the mask and the finfo.min clamp) of
  image-key columns become ``ã = a + α|a|``, then a float32 softmax; GQA keys are repeated
  first. Done by the registered medbench attention function through an
  :class:`~medbench.attention.AttentionEdit` (SDPA for every other row).
* Guidance (PAI Eq. 6): a CFG row with the templated prompt minus the image tokens, not
  amplified; ``s = γ·c − (γ−1)·u`` on ``{c ≥ log β + max c}``, then greedy. Both rows ride in
  one batched forward; a per-row image-key mask is all-False for the CFG rows. At γ=1 the CFG
  row is dropped (amplification alone).

Defaults (paper App. B): α=0.2, γ=1.1, layers 2…31 of 32 (``end_layer`` defaults to the depth;
layers beyond it are refused before decoding), β=0.1 (hard-coded in the reference), greedy,
amplification from the first token.
Variants: ``reference`` keeps amplification **off for the first forward** (the reference's
layers start in "CFG mode"; usually the yes/no answer); ``a3tune`` = ``reference`` plus A3Tune's
negative prompt, BOS + the raw question without the template (on LLaVA-Med v1, whose A3Tune script
passes ``"<image>\n" + question``, BOS + that text; backbone ``a3tune_wiring``). A3Tune's hard-coded
amplified columns (v1.5: 34…609, v1: 39…294) are the image span of its prompts, taken here from
the token ids. ``attn_backend=eager`` computes
every row eagerly (α=0, γ=1 then reproduces ``attn_implementation="eager"`` exactly; under the
default SDPA backend within 1e-5). With γ=1 the reference never amplifies; not reproduced.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from medbench.attention import AttentionEdit, edit_attention, require_installed
from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Branch, Prefill, joint_prefill, left_pad, main_branch, stack_branches
from medbench.method import MethodArgsError, Range
from medbench.methods.contrastive import BaselineDecoding, DecodingParams, plausible, text_only_branch


@dataclass(frozen=True)
class PAIParams(DecodingParams):
    BASE: ClassVar[dict] = {"selection": "greedy"}
    PRESETS: ClassVar[dict] = {"reference": {}, "a3tune": {}}
    RANGES: ClassVar[dict[str, Range]] = {"gamma": Range(1.0, 100.0), "start_layer": Range(lo=0, depth_hi=-1),
                                          "end_layer": Range(lo=1, depth_hi=0)}

    variant: Literal["default", "reference", "a3tune"] = "default"
    alpha: float = 0.2
    gamma: float = 1.1
    start_layer: int = 2
    end_layer: int | None = None
    beta: float = 0.1
    attn_backend: Literal["sdpa", "eager"] = "sdpa"

    def validate(self) -> None:
        super().validate()
        if self.end_layer is not None and self.end_layer <= self.start_layer:
            raise MethodArgsError(f"need start_layer < end_layer, got {self.start_layer}, {self.end_layer}")


class PAI(BaselineDecoding):
    name = "pai"
    label = "PAI"
    Params = PAIParams
    cutoff = "beta"

    def prepare(self, backbone: Backbone, samples: list[Any], images: list[Any]) -> None:
        self._questions = [s.question for s in samples]

    def negative_branch(self, backbone: Backbone, batch: EncodedBatch) -> Branch:
        if self.params.variant != "a3tune":
            return text_only_branch(backbone, batch, "cfg")
        questions = getattr(self, "_questions", None)
        if questions is None or len(questions) != batch.input_ids.shape[0]:
            raise MethodArgsError("pai variant=a3tune needs the raw questions (the runner's prepare hook)")
        rows = [torch.tensor(self.a3tune_negative_ids(backbone, q), dtype=torch.long) for q in questions]
        ids, mask = left_pad([r.to(batch.input_ids.device) for r in rows], backbone.pad_token_id)
        return Branch("cfg", ids, mask)

    @staticmethod
    def a3tune_negative_ids(backbone: Backbone, question: str) -> list[int]:
        """A3Tune's negative prompt: BOS + the raw question (v1.5 script); on v1 its script passes
        ``"<image>\n" + question``, which PAI's splitter keeps whole: BOS + that text, the
        placeholder as plain text (no image token in the CFG row)."""
        if getattr(backbone, "a3tune_wiring", "v1.5") != "v1":
            return backbone.tokenizer(question.strip())["input_ids"]
        text = "<image>\n" + question.strip()
        ids = backbone.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [backbone.tokenizer.bos_token_id, *ids]

    def branches(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> list[Branch]:
        if self.params.gamma == 1.0:
            return [main_branch(batch)]
        return [main_branch(batch), self.negative_branch(backbone, batch)]

    def prefill(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int]) -> Prefill:
        require_installed(backbone.model)
        self.check_backbone(backbone)
        n_layers = int(backbone.text_config.num_hidden_layers)
        end = n_layers if self.params.end_layer is None else self.params.end_layer
        branches = self.branches(backbone, batch, seeds)
        ids, _, _ = stack_branches(branches, backbone.pad_token_id)
        self._edit = AttentionEdit(key_mask=backbone.image_token_mask(ids), alpha=self.params.alpha,
                                   layers=set(range(self.params.start_layer, end)),
                                   eager=self.params.attn_backend == "eager")
        with self.forward_context(0):
            return joint_prefill(backbone, branches)

    def forward_context(self, step: int) -> contextlib.AbstractContextManager:
        edit = self._edit
        if step == 0 and self.params.variant in ("reference", "a3tune"):
            if not edit.eager:
                return contextlib.nullcontext()
            edit = AttentionEdit(edit.key_mask, 0.0, edit.layers, eager=True)
        if edit.alpha == 0.0 and not edit.eager:
            return contextlib.nullcontext()
        return edit_attention(edit)

    def combine(self, logits: list[torch.Tensor], step: int) -> torch.Tensor:
        c = F.log_softmax(logits[0], -1)
        gamma = self.params.gamma
        scores = c if len(logits) == 1 else gamma * c - (gamma - 1) * F.log_softmax(logits[1], -1)
        return scores.masked_fill(~plausible(c, self.params.beta), float("-inf"))
