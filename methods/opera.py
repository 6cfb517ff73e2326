"""OPERA — Over-trust Penalty and Retrospection-Allocation (Huang et al., CVPR 2024).

Beam search (B beams) where each beam's top-``N_can`` candidates are penalised by the
"over-trust" pattern of the last layer's attention, with rollback (OPERA §3.2–3.3):

* Candidates ``C_b = topk(l_b, N_can)``, probed in **one** forward with the candidates as queries
  at the same position and a tree mask (each sees the cache and itself), then ``crop(−N_can)``:
  probes never pollute the real cache. ``a_c = max_h A^{(L)}_h[n, :]``, ``ã_c = a_c / Σ a_c``;
  generated rows are captured the same way when their token is fed and follow their beam.
* Over-trust (Eq. 3–4): ``ω = ã[R:, R:]`` (last ``window_size`` positions),
  ``φ_j = 1e-7·Π_{i≥j} σ·ω_{i,j}``, ``φ(c) = max_j φ_j``, ``loc(c) = argmax_j``.
* Penalty: ``P(c) = −Σ_{k∈image} ã_c[k]`` while the response including c has ≤ 10 tokens, then
  ``φ(c)``. Score ``s_b(c) = l_b(c) − w·P(c)``, −inf for non-candidates, then ``log_softmax``
  (renormalised over the candidates), processors, and HF's 2B beam step (length penalty,
  ``early_stopping=False`` heuristic).
* Retrospection (Eq. 5): each beam records the mode of ``loc`` over its candidates, and the
  records follow their beam's lineage; ``r*`` is the mode over the new beams' latest records. If
  every beam recorded ``r*`` more than ``threshold`` times and ``r* ≥ 10``, restore the state before
  response position ``r*+1`` (each position at most ``N_can`` times, else ``r*``, else none; never
  beyond ``window_size``) and re-select that step from the full vocabulary, banning the
  (beam, token) pairs already tried. The cache is cropped to the prompt and the kept response
  re-encoded in one forward.

One sample per call (a rollback rewrites one sample's time axis). R is the prompt length.
Defaults (paper App. B): B=5, σ=50, threshold=15, N_can=5, w=1, window 512; for LLaVA-Med v1.5
on report tasks σ=25, threshold=25 (``scale_factor``/``threshold`` left unset pick these).
With ``w=0``, ``threshold ≥ max_new_tokens``, ``candidate_logprobs=full`` and ``N_can ≥ 2B`` it
equals HF beam search. If every beam's candidates are −inf the step falls back to w=0.

Variant ``reference`` (flags ``candidate_floor=-999 overtrust_dtype=float16 rollback=reference``)
reproduces OPERA's ``opera_beam_search``:

* non-candidates get a −999 floor, so once ``w·P(c) ≳ 1000`` a non-candidate beats them;
* the product Π(σ·ω) is taken in the attention's dtype (float16 in the OPERA and A³TUNE runs; on
  CUDA it accumulates in float32 and is cast back): past 65504 it **overflows to inf** (it does
  not saturate), φ = inf, the candidate's score −inf, and a step whose candidates are all −inf
  picks among the −999 non-candidates, all equally likely. ``1e-7·Π`` is rounded to float16 again
  (values below ~6e-8 become 0). This is the likely cause of A3Tune's "nonsensical content" at σ=50;
* the rollback records are kept per beam slot (``history_rollback_locs``) and never reordered
  with the beams, ``r*`` is the mode of the current beams' modes, ω is never cut to the window,
  and a position further back than ``window_size`` is clamped into it — where the reference's
  ``window_size``-long state history no longer reaches, so its bare ``except`` skips the
  rollback (its state pops on that path are not reproduced). It decides before selecting the
  current step, so it re-selects at most the previous one.

Spec notes: the spec's rollback ("r* is the mode over beams", "never further back than
``window_size``") is medbench's lineage rule; the reference's differs as listed above.

Variant ``a3tune`` is ``reference`` plus A3Tune's wiring (``wiring=a3tune``), expressed through
the image span and the backbone's ``a3tune_wiring``: the image slice is one token too long; on
v1.5 the window starts N−1 tokens early (inside the image: the image bonus never fires, prompt
rows come from the prefill attention) and 128 new tokens; on v1 it starts N tokens after the
prompt (``len(input_ids)+256``: the image bonus lasts N+10 response tokens) and 512 new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from medbench.attention import CaptureRequest, capture
from medbench.backbones.base import Backbone, EncodedBatch
from medbench.engine import Generation, encode_images, image_inputs, strip
from medbench.method import DecodingMethod, Range
from medbench.methods.contrastive import DecodingParams, apply_processors, image_positions
from medbench.types import AnswerType

NEG = -1.0e9


@dataclass(frozen=True)
class OPERAParams(DecodingParams):
    BASE: ClassVar[dict] = {"selection": "greedy", "candidate_floor": "-inf", "overtrust_dtype": "float32",
                            "rollback": "lineage", "wiring": "prompt"}
    PRESETS: ClassVar[dict] = {
        "reference": {"candidate_floor": "-999", "overtrust_dtype": "float16", "rollback": "reference"},
        "a3tune": {"candidate_floor": "-999", "overtrust_dtype": "float16", "rollback": "reference",
                   "wiring": "a3tune"},
    }
    RANGES: ClassVar[dict[str, Range]] = {
        "num_beams": Range(1, 64), "scale_factor": Range(0.0, 1e4, lo_open=True), "threshold": Range(lo=0),
        "num_attn_candidates": Range(1, 64), "penalty_weights": Range(0.0, 100.0), "window_size": Range(lo=2),
        "length_penalty": Range(-10.0, 10.0), "max_new_tokens": Range(lo=1),
    }

    variant: Literal["default", "reference", "a3tune"] = "default"
    num_beams: int = 5
    scale_factor: float | None = None
    threshold: int | None = None
    num_attn_candidates: int = 5
    penalty_weights: float = 1.0
    window_size: int = 512
    candidate_logprobs: Literal["topk", "full"] = "topk"
    length_penalty: float = 1.0
    max_new_tokens: int | None = None
    candidate_floor: Literal["-inf", "-999"] | None = None
    overtrust_dtype: Literal["float32", "float16"] | None = None
    rollback: Literal["lineage", "reference"] | None = None
    wiring: Literal["prompt", "a3tune"] | None = None


def overtrust(omega: torch.Tensor, rows: torch.Tensor, sigma: float, dtype: str = "float32"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """φ(c) and loc(c) [B, C] from beam history ω [B, T, T] and candidate rows [B, C, T+1] (Eq. 3–4).

    ``dtype="float16"`` is the reference's arithmetic on CUDA: σ·ω rounded to float16, the column
    product accumulated in float32 and cast back (above 65504 it becomes inf), ``1e-7·Π`` rounded
    to float16 (below ~6e-8 it becomes 0). An empty window (no response column yet) gives φ = 0, loc 0.
    """
    b, c = rows.shape[:2]
    if rows.shape[-1] == 0:
        return rows.new_zeros(b, c), torch.zeros(b, c, dtype=torch.long, device=rows.device)
    half = dtype == "float16"

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return (sigma * x.half().float()).half().float() if half else sigma * x

    t = omega.shape[1]
    lower = torch.ones(t, t, dtype=torch.bool, device=omega.device).tril()
    colprod = torch.where(lower, scaled(omega), torch.ones_like(omega)).prod(dim=1)  # [B, T]
    colprod = torch.cat([colprod, colprod.new_ones(colprod.shape[0], 1)], dim=1)
    product = colprod[:, None, :] * scaled(rows)  # Π_{i≥j} σ·ω_{i,j}, candidate row included
    if half:
        phi = (1e-7 * product.half().float()).half().float()
    else:
        phi = 1e-7 * product
    return phi.max(dim=-1)


def normalised_rows(request: CaptureRequest, layer: int) -> torch.Tensor:
    """Max-over-heads captured rows [B, Q, K], each normalised to sum 1."""
    rows = request.captured[layer].float().amax(dim=1)
    return rows / rows.sum(-1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)


@dataclass
class Step:
    """What a rollback needs from one beam step (response index s)."""

    parents: torch.Tensor
    tokens: torch.Tensor
    rows: torch.Tensor | None
    records: torch.Tensor
    modes: torch.Tensor
    scores: torch.Tensor
    full: torch.Tensor
    finished: list
    open: bool


class OPERA(DecodingMethod):
    name = "opera"
    label = "OPERA"
    Params = OPERAParams

    def prepare(self, backbone: Backbone, samples: list[Any], images: list[Any]) -> None:
        self._report = any(s.answer_type == AnswerType.REPORT for s in samples)

    def settings(self, backbone: Backbone) -> tuple[float, int]:
        """σ and threshold: explicit, else 25/25 for LLaVA-Med v1.5 reports, else 50/15."""
        v15_report = getattr(self, "_report", False) and "v1.5" in str(getattr(backbone, "name", ""))
        sigma = self.params.scale_factor if self.params.scale_factor is not None else (25.0 if v15_report else 50.0)
        threshold = self.params.threshold if self.params.threshold is not None else (25 if v15_report else 15)
        return sigma, threshold

    def new_tokens(self, backbone: Backbone) -> int | None:
        """``max_new_tokens``, else A3Tune's script's (v1.5 128, v1 512) under ``wiring=a3tune``, else the task's."""
        if self.params.max_new_tokens is not None or self.params.wiring != "a3tune":
            return self.params.max_new_tokens
        return 512 if getattr(backbone, "a3tune_wiring", "v1.5") == "v1" else 128

    def bind(self, backbone: Backbone) -> None:
        """Resolve the backbone-dependent token budget so that :meth:`resolved_args` records it."""
        self._new_tokens = self.new_tokens(backbone)

    def resolved_args(self) -> dict[str, Any]:
        args = super().resolved_args()
        if args["max_new_tokens"] is None and getattr(self, "_new_tokens", None) is not None:
            args["max_new_tokens"] = self._new_tokens
        return args

    def generate(self, backbone: Backbone, batch: EncodedBatch, seeds: list[int], max_new_tokens: int) -> Generation:
        batch = batch.to(backbone.device)
        steps = self.new_tokens(backbone) or max_new_tokens
        tokens, guards = [], []
        for i in range(batch.input_ids.shape[0]):
            keep = batch.attention_mask[i].bool()
            row, n_guard = self.decode_one(backbone, batch.input_ids[i][keep][None], batch.pixel_values[i:i + 1], steps)
            tokens.append(row)
            guards.append(n_guard)
        return Generation(strip(tokens, backbone.eos_token_id, backbone.pad_token_id), guards)

    def forward(self, backbone: Backbone, ids: torch.Tensor, mask: torch.Tensor, position: torch.Tensor, cache: Any,
                queries: torch.Tensor, n_keys: int, **kwargs: Any) -> tuple[Any, torch.Tensor]:
        """A cached forward capturing the last layer's normalised rows of ``queries`` over all keys."""
        layer = int(backbone.text_config.num_hidden_layers) - 1
        keys = torch.arange(n_keys, device=ids.device).expand(ids.shape[0], n_keys)
        request = CaptureRequest(query_positions=queries, key_positions=keys, layers={layer}, per_head=True)
        with capture(request):
            out = backbone.model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache,
                                 use_cache=True, logits_to_keep=1, **kwargs)
        if not request.captured:
            raise RuntimeError("attention capture saw no layer: is the medbench attention function installed?")
        return out, normalised_rows(request, layer)

    def probe(self, backbone: Backbone, cache: Any, cand: torch.Tensor, n: int) -> torch.Tensor:
        """Tree probe: candidate rows [B, C, n+1] over keys 0..n−1 and the candidate itself."""
        b, c = cand.shape
        dtype = next(backbone.model.parameters()).dtype
        visible = torch.ones(b, 1, c, n + c, dtype=torch.bool, device=cand.device)
        visible[..., n:] = torch.eye(c, dtype=torch.bool, device=cand.device)
        mask = torch.zeros(visible.shape, dtype=dtype, device=cand.device).masked_fill(~visible, torch.finfo(dtype).min)
        position = torch.full((b, c), n, dtype=torch.long, device=cand.device)
        queries = (n + torch.arange(c, device=cand.device)).expand(b, c)
        _, rows = self.forward(backbone, cand, mask, position, cache, queries, n + c)
        cache.crop(-c)
        own = torch.gather(rows[..., n:], 2, torch.arange(c, device=cand.device).view(1, c, 1).expand(b, c, 1))
        probe = torch.cat([rows[..., :n], own], dim=-1)
        return probe / probe.sum(-1, keepdim=True).clamp_min(torch.finfo(probe.dtype).tiny)

    @torch.inference_mode()
    def decode_one(self, backbone: Backbone, ids: torch.Tensor, pixels: torch.Tensor, max_new: int
                   ) -> tuple[list[int], int]:
        from transformers import DynamicCache

        p, model = self.params, backbone.model
        sigma, threshold = self.settings(backbone)
        n_beams, n_cand, eos = p.num_beams, p.num_attn_candidates, backbone.eos_token_id
        prompt = ids.shape[1]
        span = image_positions(backbone, ids)[0]
        start, image_cols = self.key_positions(backbone, span, prompt)
        reference = p.rollback == "reference"
        features = encode_images(model, pixels)
        cache = DynamicCache(config=model.config)
        mask = torch.ones_like(ids)
        position = torch.arange(prompt, device=ids.device)[None]
        queries = torch.arange(start, prompt, device=ids.device)[None] if start < prompt else position[:, -1:]
        out, rows = self.forward(backbone, ids, mask, position, cache, queries, prompt,
                                 **image_inputs(features.reshape(-1, features.shape[-1])))
        pre = rows[0, :, start:] if start < prompt else rows.new_zeros(0, 0)  # shared prompt rows of ω
        cache.batch_repeat_interleave(n_beams)
        logits = out.logits[:, -1].float().repeat(n_beams, 1)
        history: list[Step] = []
        omega = pre[None].expand(n_beams, -1, -1).clone()
        seqs = torch.zeros(n_beams, 0, dtype=torch.long, device=ids.device)
        records = torch.zeros(n_beams, 0, dtype=torch.long, device=ids.device)
        slots = records.clone()  # reference: per-slot modes, never reordered with the beams
        scores = torch.full((n_beams,), NEG, device=ids.device)
        scores[0] = 0.0
        finished: list[tuple[float, list[int]]] = []
        is_open, guards, rollbacks, banned = True, 0, {}, {}
        t = 0
        while True:
            n = prompt + t
            bad = ~torch.isfinite(logits).any(-1) | torch.isnan(logits).any(-1)
            if bad.any():
                guards += 1
                logits = torch.where(bad[:, None], torch.full_like(logits, NEG), torch.nan_to_num(logits, nan=NEG))
                logits[bad, eos] = 0.0
            logits[:, backbone.image_token_id] = NEG  # the placeholder is never answer text
            full = torch.log_softmax(logits, -1)
            cand_scores, cand = logits.topk(n_cand, dim=-1)
            cand_rows = self.probe(backbone, cache, cand, n)
            lo = self.window_start(omega.shape[1])
            phi, loc = overtrust(omega[:, lo:, lo:], cand_rows[..., start + lo:], sigma, p.overtrust_dtype)
            loc = loc + lo
            if n + 1 - start <= 10:
                penalty = -cand_rows[..., image_cols].sum(-1)
            else:
                penalty = phi
            step_scores = self.candidate_scores(logits, cand, cand_scores, penalty)
            history_ids = torch.cat([ids.expand(n_beams, -1), seqs], dim=1)
            logprobs = apply_processors(step_scores, history_ids, p)
            modes = loc.mode(dim=-1).values
            parents, tokens, scores, finished, is_open = self.beam_step(
                logprobs, scores, seqs, t, max_new, finished, is_open, eos)
            seqs = torch.cat([seqs[parents], tokens[:, None]], dim=1)
            records = torch.cat([records[parents], modes[parents][:, None]], dim=1)
            slots = torch.cat([slots, modes[:, None]], dim=1)
            omega = omega[parents]
            history.append(Step(parents, tokens, None, modes[parents], modes, scores, full, list(finished), is_open))
            if not is_open or t + 1 >= max_new:
                break
            if reference:
                target = self.reference_rollback_target(slots, modes, start, prompt, t, threshold, rollbacks)
            else:
                target = self.rollback_target(records, start, prompt, t, threshold, rollbacks)
            cache.reorder_cache(parents)
            if target is None:
                out, rows = self.forward(backbone, tokens[:, None], torch.ones(n_beams, n + 1, dtype=torch.long,
                                         device=ids.device), torch.full((n_beams, 1), n, device=ids.device), cache,
                                         torch.full((n_beams, 1), n, device=ids.device), n + 1)
                history[-1].rows = rows[:, 0, start:]
                omega = self.grow(omega, rows[:, 0, start:])
                logits = out.logits[:, -1].float()
                t += 1
                continue
            if not reference:
                rollbacks[target] = rollbacks.get(target, 0) + 1
            slots = slots[:, :target + 1]
            seqs, records, omega, scores, finished, is_open = self.restore(history, target, pre, n_beams)
            step = history[target]
            ban = banned.setdefault(target, set())
            ban.update(zip(step.parents.tolist(), step.tokens.tolist()))
            logprobs = apply_processors(step.full, torch.cat([ids.expand(n_beams, -1), seqs], dim=1), p).clone()
            for b, tok in ban:
                logprobs[b, tok] = float("-inf")
            parents, tokens, scores, finished, is_open = self.beam_step(
                logprobs, scores, seqs, target, max_new, finished, is_open, eos)
            del history[target:]
            seqs = torch.cat([seqs[parents], tokens[:, None]], dim=1)
            records = torch.cat([records[parents], step.modes[parents][:, None]], dim=1)
            omega = omega[parents]
            history.append(Step(parents, tokens, None, step.modes[parents], step.modes, scores, step.full,
                                list(finished), is_open))
            if not is_open:
                break
            cache.crop(-(n - prompt))
            length = prompt + seqs.shape[1]
            out, rows = self.forward(
                backbone, seqs, torch.ones(n_beams, length, dtype=torch.long, device=ids.device),
                torch.arange(prompt, length, device=ids.device).expand(n_beams, -1), cache,
                torch.full((n_beams, 1), length - 1, device=ids.device), length)
            history[-1].rows = rows[:, 0, start:]
            omega = self.grow(omega, rows[:, 0, start:])
            logits = out.logits[:, -1].float()
            t = seqs.shape[1]
        best = max(finished, key=lambda x: x[0])[1] if finished else seqs[0].tolist()
        return best, guards

    def candidate_scores(self, logits: torch.Tensor, cand: torch.Tensor, cand_scores: torch.Tensor,
                         penalty: torch.Tensor) -> torch.Tensor:
        """``log_softmax`` of ``l − w·P`` on the candidates (floor: −inf, −999 for ``reference``)."""
        p = self.params
        floor = -999.0 if p.candidate_floor == "-999" else float("-inf")
        for weight in (p.penalty_weights, 0.0):
            base = logits.clone() if p.candidate_logprobs == "full" else torch.full_like(logits, floor)
            penalised = cand_scores - weight * penalty if weight else cand_scores
            scores = base.scatter(1, cand, penalised.nan_to_num(nan=float("-inf"), neginf=float("-inf")))
            alive = torch.isfinite(scores).any(-1)
            if bool(alive.any()):
                out = torch.log_softmax(scores, -1)
                return torch.where(alive[:, None], out, torch.full_like(out, float("-inf")))
        return torch.log_softmax(logits, -1)

    def beam_step(self, logprobs: torch.Tensor, running: torch.Tensor, seqs: torch.Tensor, t: int, max_new: int,
                  finished: list, is_open: bool, eos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list, bool]:
        """HF's beam step (top 2B, finished top-B ranks, length penalty, early-stop heuristic)."""
        n_beams, vocab = logprobs.shape
        acc = (logprobs + running[:, None]).view(-1)
        top, idx = acc.topk(2 * n_beams)
        parent, token = idx // vocab, idx % vocab
        hits = (token == eos) | (t + 1 >= max_new)
        finished = list(finished)
        if is_open:
            for rank in range(n_beams):
                if bool(hits[rank]) and float(top[rank]) > NEG / 2:
                    seq = [*seqs[parent[rank]].tolist(), int(token[rank])]
                    finished.append((float(top[rank]) / (t + 1) ** self.params.length_penalty, seq))
            finished = sorted(finished, key=lambda x: -x[0])[:n_beams]
        run = top + hits.float() * NEG
        keep = run.topk(n_beams).indices
        new_scores = run[keep]
        best = float(new_scores[0]) / (t + 1) ** self.params.length_penalty
        worst = min(s for s, _ in finished) if len(finished) == n_beams else NEG
        return parent[keep], token[keep], new_scores, finished, is_open and best > worst

    def rollback_target(self, records: torch.Tensor, start: int, prompt: int, t: int, threshold: int,
                        used: dict) -> int | None:
        """Response step to re-select, or None (Eq. 5; positions used ≤ N_can times, window)."""
        r_star = int(records[:, -1].mode().values)
        if r_star < 10 or not bool(((records == r_star).sum(-1) > threshold).all()):
            return None
        for rel in (r_star + 1, r_star):
            target = start + rel - prompt
            if 1 <= target <= t and t + 1 - target <= self.params.window_size \
                    and used.get(target, 0) < self.params.num_attn_candidates:
                return target
        return None

    def window_start(self, rows: int) -> int:
        """First ω row/column kept: the last ``window_size`` positions (the reference never cuts ω)."""
        return 0 if self.params.rollback == "reference" else max(0, rows + 1 - self.params.window_size)

    def reference_rollback_target(self, slots: torch.Tensor, modes: torch.Tensor, start: int, prompt: int, t: int,
                                  threshold: int, used: dict) -> int | None:
        """The reference's rule: r* = mode of the current beams' modes, counted in per-slot records.

        Positions are relative to the response start; each may be used ``N_can`` times (r*+1, else
        r*), its count spent before the window test. A position more than ``window_size`` steps back
        is clamped into the window by the reference, which then restores from a state its
        ``window_size``-long history no longer holds; its bare ``except`` turns that into no rollback
        (after popping saved states, which is not reproduced). The reference decides before it
        selects this step, so it re-selects at most the previous step (a later r*+1 restores that
        one). A position before the second response token gives no rollback here.
        """
        p = self.params
        r_star = int(modes.mode().values)
        if not bool(((slots == r_star).sum(-1) > threshold).all()) or r_star < 10:
            return None
        pos = r_star + 1
        if pos >= p.window_size:  # the reference's per-position counter has window_size entries
            return None
        if used.get(pos, 0) >= p.num_attn_candidates:
            pos -= 1
            if used.get(pos, 0) >= p.num_attn_candidates:
                return None
        used[pos] = used.get(pos, 0) + 1
        target = min(start + pos - prompt, t - 1)  # its newest restorable state is the step before this one
        if target < 1 or t - target >= p.window_size:
            return None
        return target

    def key_positions(self, backbone: Backbone, span: torch.Tensor, prompt: int) -> tuple[int, torch.Tensor]:
        """Response start R and image columns: the prompt end and the span, or A3Tune's wiring.

        ``wiring=a3tune`` expresses A3Tune's hard-coded positions through the span (N tokens from
        ``first``): its image slice ``[first, first+N]`` is inclusive (one token too many) and its
        ``response_start = len(input_ids)`` is read from ids holding one image sentinel on v1.5
        (R = prompt − (N−1), inside the image) or all N patch tokens on v1, where the script adds
        ``+256`` (R = prompt + N: the image bonus lasts N+10 response tokens). The backbone's
        ``a3tune_wiring`` says which.
        """
        first, n_img = int(span[0]), span.numel()
        if self.params.wiring != "a3tune":
            return prompt, span
        cols = torch.arange(first, first + n_img + 1, device=span.device)
        if getattr(backbone, "a3tune_wiring", "v1.5") == "v1":
            return prompt + n_img, cols
        return prompt - (n_img - 1), cols

    def restore(self, history: list[Step], target: int, pre: torch.Tensor, n_beams: int) -> tuple:
        """Beams as they were before response step ``target`` (rebuilt along the parent lineage)."""
        idx = torch.arange(n_beams, device=pre.device)
        toks, recs, rows = [], [], []
        for s in range(target - 1, -1, -1):
            toks.append(history[s].tokens[idx])
            recs.append(history[s].records[idx])
            rows.append(history[s].rows[idx])
            idx = history[s].parents[idx]
        seqs = torch.stack(toks[::-1], dim=1)
        records = torch.stack(recs[::-1], dim=1)
        omega = pre[None].expand(n_beams, -1, -1).clone()
        for r in rows[::-1]:
            omega = self.grow(omega, r)
        prev = history[target - 1]
        return seqs, records, omega, prev.scores, list(prev.finished), prev.open

    @staticmethod
    def grow(omega: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """Append one stored row [B, T+1] (and a zero column) to ω [B, T, T]; rows before R are empty."""
        if row.shape[-1] == 0:
            return omega
        omega = torch.nn.functional.pad(omega, (0, 1, 0, 0))
        return torch.cat([omega, row[:, None, : omega.shape[-1]]], dim=1)
