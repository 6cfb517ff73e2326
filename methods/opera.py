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

Batched across samples: one set of forwards (prefill, one tree probe per step, one feed per step)
serves every beam of every unfinished sample of a left-padded batch; the beam step, rollback
target, restore, bans, finished hypotheses, early stop and guards stay per sample (:class:`Beams`),
in each sample's own positions (R is its prompt length). The rows share one cache
(:class:`RowCache`) with a per-row mask of valid key columns: a rollback invalidates that sample's
response columns and re-encodes its kept response in the same forward in which the other samples
feed their new token behind masked padding queries; invalid columns are then compacted away (a
plain crop when they are a common tail, as at batch 1, so a batch of one runs exactly the
per-sample forwards). Finished samples' rows leave the cache. Across batch compositions the
results agree up to padding's float noise (logits within ~1e-5 in float32).
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

from dataclasses import dataclass, field
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


@dataclass
class Beams:
    """One sample's beam search: everything a rollback rewinds, kept apart from the other samples.

    ``ids`` is the prompt without padding; ``start``, ``image_cols`` and every attention row are in
    the sample's own positions (prompt from 0, response from ``len(ids)``), whatever its padding
    and cache columns in the batch. ``used`` counts the rollbacks per position, ``banned`` the
    (beam, token) pairs already tried per step, ``rollbacks`` the rollbacks performed.
    """

    ids: torch.Tensor
    start: int
    image_cols: torch.Tensor
    pre: torch.Tensor
    logits: torch.Tensor
    omega: torch.Tensor
    seqs: torch.Tensor
    records: torch.Tensor
    slots: torch.Tensor
    scores: torch.Tensor
    finished: list = field(default_factory=list)
    history: list[Step] = field(default_factory=list)
    is_open: bool = True
    guards: int = 0
    used: dict = field(default_factory=dict)
    banned: dict = field(default_factory=dict)
    rollbacks: int = 0

    @property
    def prompt(self) -> int:
        return self.ids.shape[1]

    @property
    def t(self) -> int:
        """Response tokens so far (the next step selects response token ``t``)."""
        return self.seqs.shape[1]

    def best(self) -> list[int]:
        return max(self.finished, key=lambda x: x[0])[1] if self.finished else self.seqs[0].tolist()


def key_index(valid: torch.Tensor) -> torch.Tensor:
    """[R, W] cache columns of each row's valid keys in order, right-aligned (W: the most valid keys).

    A row with fewer valid keys is filled on the left with some of its invalid columns, which every
    query of that row has masked out (probability exactly 0).
    """
    width = int(valid.sum(-1).max())
    order = torch.sort(valid.to(torch.int8), dim=-1, stable=True).indices
    return order[:, valid.shape[1] - width:]


class RowCache:
    """One ``DynamicCache`` for all beam rows of the active samples, with each row's valid key columns.

    Every row has the same number of cache columns; a row's valid columns, in order, are its
    sample's prompt and response (position ids count only those), the rest is masked out by the
    2-D attention mask: left padding, a response discarded by a rollback, the padding queries of
    a forward that re-encodes another sample's response. :meth:`compact` removes the invalid
    columns (a crop when they are a common tail, else a gather into a fresh cache), so a cache
    without them, as at batch 1, is exactly the per-sample cache.
    """

    def __init__(self, cache: Any, valid: torch.Tensor, config: Any) -> None:
        self.cache, self.valid, self.config = cache, valid, config

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def select(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` in that order (beam parents; rows of finished samples left out)."""
        self.cache.reorder_cache(index)
        self.valid = self.valid[index]

    def reset(self, rows: slice, keep: int) -> None:
        """Keep only the first ``keep`` valid columns (the prompt) of ``rows``."""
        self.valid[rows] &= self.valid[rows].cumsum(-1) <= keep

    def compact(self) -> None:
        """Drop the invalid columns: each row's valid keys right-aligned, as wide as the longest row."""
        order = key_index(self.valid)
        width = order.shape[1]
        prefix = torch.arange(width, device=order.device).expand_as(order)
        if width == self.length and torch.equal(order, prefix):
            return
        if torch.equal(order, prefix):
            self.cache.crop(width - self.length)
        else:
            from transformers import DynamicCache

            heads = order[:, None, :, None]
            data = [(layer.keys.gather(2, heads.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])),
                     layer.values.gather(2, heads.expand(-1, layer.values.shape[1], -1, layer.values.shape[3])))
                    for layer in self.cache.layers]
            self.cache = DynamicCache(data, config=self.config)
        self.valid = torch.gather(self.valid, 1, order)


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
        steps = self.new_tokens(backbone) or max_new_tokens
        tokens, guards = self.decode(backbone, batch.to(backbone.device), steps)
        return Generation(strip(tokens, backbone.eos_token_id, backbone.pad_token_id), guards)

    def decode_one(self, backbone: Backbone, ids: torch.Tensor, pixels: torch.Tensor, max_new: int
                   ) -> tuple[list[int], int]:
        """One unpadded prompt ``ids`` [1, P]: the best sequence (unstripped) and its guard count."""
        tokens, guards = self.decode(backbone, EncodedBatch(ids, torch.ones_like(ids), pixels, [""]), max_new)
        return tokens[0], guards[0]

    def forward(self, backbone: Backbone, ids: torch.Tensor, mask: torch.Tensor, position: torch.Tensor, cache: Any,
                queries: torch.Tensor, keys: int | torch.Tensor, **kwargs: Any) -> tuple[Any, torch.Tensor]:
        """A cached forward capturing the last layer's normalised rows of ``queries`` over ``keys``.

        ``keys``: a count (columns 0..keys−1 of every row) or [R, K] cache columns per row.
        """
        layer = int(backbone.text_config.num_hidden_layers) - 1
        if isinstance(keys, int):
            keys = torch.arange(keys, device=ids.device).expand(ids.shape[0], keys)
        request = CaptureRequest(query_positions=queries, key_positions=keys, layers={layer}, per_head=True)
        with capture(request):
            out = backbone.model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache,
                                 use_cache=True, logits_to_keep=1, **kwargs)
        if not request.captured:
            raise RuntimeError("attention capture saw no layer: is the medbench attention function installed?")
        return out, normalised_rows(request, layer)

    def probe(self, backbone: Backbone, cache: Any, cand: torch.Tensor, n: int, valid: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Tree probe: candidate rows [R, C, K+1] over each row's valid keys and the candidate itself.

        ``n`` cache columns, of which ``valid`` [R, n] (default: all) are the row's keys; a row's K
        keys are the last of its row (right-aligned, zeros before when it has fewer than the others).
        Each candidate sits at its row's next position, sees the valid keys and itself; then
        ``crop(−C)``.
        """
        b, c = cand.shape
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=cand.device)
        dtype = next(backbone.model.parameters()).dtype
        visible = torch.ones(b, 1, c, n + c, dtype=torch.bool, device=cand.device)
        visible[..., :n] = valid[:, None, None, :]
        visible[..., n:] = torch.eye(c, dtype=torch.bool, device=cand.device)
        mask = torch.zeros(visible.shape, dtype=dtype, device=cand.device).masked_fill(~visible, torch.finfo(dtype).min)
        position = valid.sum(-1, keepdim=True).expand(b, c)
        queries = (n + torch.arange(c, device=cand.device)).expand(b, c)
        keys = key_index(valid)
        width = keys.shape[1]
        _, rows = self.forward(backbone, cand, mask, position, cache, queries, torch.cat([keys, queries], dim=1))
        cache.crop(-c)
        own = torch.gather(rows[..., width:], 2, torch.arange(c, device=cand.device).view(1, c, 1).expand(b, c, 1))
        probe = torch.cat([rows[..., :width], own], dim=-1)
        return probe / probe.sum(-1, keepdim=True).clamp_min(torch.finfo(probe.dtype).tiny)

    @torch.inference_mode()
    def decode(self, backbone: Backbone, batch: EncodedBatch, max_new: int) -> tuple[list[list[int]], list[int]]:
        """Beam search with over-trust penalty and rollback for every sample of a left-padded batch.

        Every forward serves all active samples' beams: the prefill, one tree probe per step, and
        one forward feeding each beam its new token — or, for a sample that rolled back, its kept
        response re-encoded (shorter rows are left-padded with masked queries). Everything else is
        per sample (:class:`Beams`, :meth:`advance`). A finished sample's rows leave the cache.
        Returns the best sequence per sample (unstripped) and its guard count; the rollbacks per
        sample are left in ``self.last_rollbacks``.
        """
        from transformers import DynamicCache

        p, model = self.params, backbone.model
        n_beams = p.num_beams
        columns = batch.attention_mask.bool().any(0)  # columns padded in every row are not needed
        ids, mask = batch.input_ids[:, columns], batch.attention_mask[:, columns]
        n, width = ids.shape
        device = ids.device
        features = encode_images(model, batch.pixel_values)
        cache = DynamicCache(config=model.config)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        beams, spans = [], []
        for i in range(n):
            own = ids[i][mask[i].bool()][None]
            span = image_positions(backbone, own)[0]
            start, image_cols = self.key_positions(backbone, span, own.shape[1])
            beams.append((own, start, image_cols))
            pad = width - own.shape[1]
            spans.append(pad + (torch.arange(start, own.shape[1], device=device) if start < own.shape[1]
                                else torch.tensor([own.shape[1] - 1], device=device)))
        longest = max(s.numel() for s in spans)
        queries = torch.stack([torch.cat([s[:1].expand(longest - s.numel()), s]) for s in spans])
        out, rows = self.forward(backbone, ids, mask, position, cache, queries, width,
                                 **image_inputs(features.reshape(-1, features.shape[-1])))
        cache.batch_repeat_interleave(n_beams)
        state = RowCache(cache, mask.bool().repeat_interleave(n_beams, 0), model.config)
        active = []
        for i, (own, start, image_cols) in enumerate(beams):
            prompt = own.shape[1]
            r = rows[i, longest - spans[i].numel():, width - prompt:]
            pre = r[:, start:] if start < prompt else r.new_zeros(0, 0)  # shared prompt rows of ω
            scores = torch.full((n_beams,), NEG, device=device)
            scores[0] = 0.0
            empty = torch.zeros(n_beams, 0, dtype=torch.long, device=device)
            active.append((i, Beams(own, start, image_cols, pre, out.logits[i:i + 1, -1].float().repeat(n_beams, 1),
                                    pre[None].expand(n_beams, -1, -1).clone(), empty, empty, empty.clone(), scores)))
        done: dict[int, Beams] = {}
        while active:
            chosen = [self.candidates(backbone, s) for _, s in active]
            cand_rows = self.probe(backbone, state.cache, torch.cat([c[2] for c in chosen]), state.length, state.valid)
            feeds = []
            for k, ((i, s), (full, cand_scores, cand)) in enumerate(zip(active, chosen)):
                own = cand_rows[k * n_beams:(k + 1) * n_beams, :, -(s.prompt + s.t + 1):]
                feed = self.advance(backbone, s, full, cand, cand_scores, own, max_new)
                if feed is None:
                    done[i] = s
                else:
                    feeds.append((k, i, s, *feed))
            if not feeds:
                break
            rows_of = torch.arange(n_beams, device=device)
            state.select(torch.cat([k * n_beams + parents for k, _, _, parents, _, _ in feeds]))
            for j, (_, _, s, _, _, reset) in enumerate(feeds):
                if reset:
                    state.reset(slice(j * n_beams, (j + 1) * n_beams), s.prompt)
            if len(feeds) < len(active) or any(f[-1] for f in feeds):
                state.compact()
            active = [(i, s) for _, i, s, _, _, _ in feeds]
            out, rows = self.feed(backbone, state, [f[4] for f in feeds])
            for j, (_, _, s, _, _, _) in enumerate(feeds):
                own = rows[j * n_beams + rows_of, 0, -(s.prompt + s.t):]
                s.history[-1].rows = own[:, s.start:]
                s.omega = self.grow(s.omega, own[:, s.start:])
                s.logits = out.logits[j * n_beams:(j + 1) * n_beams, -1].float()
        self.last_rollbacks = [done[i].rollbacks for i in range(n)]
        return [done[i].best() for i in range(n)], [done[i].guards for i in range(n)]

    def feed(self, backbone: Backbone, state: RowCache, new: list[torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """One forward appending each sample's new ids [B, m] (its beams' rows, in order) to the cache.

        Rows with fewer ids are left-padded with masked queries (their columns stay invalid, then
        :meth:`RowCache.compact`); returns the output and each row's captured last-query row over
        its valid keys (right-aligned).
        """
        device = state.valid.device
        width = max(x.shape[1] for x in new)
        ids = torch.cat([torch.nn.functional.pad(x, (width - x.shape[1], 0), value=backbone.pad_token_id)
                         for x in new])
        fresh = torch.cat([torch.arange(width, device=device).expand(x.shape[0], width) >= width - x.shape[1]
                           for x in new])
        position = (state.valid.sum(-1, keepdim=True) + fresh.long().cumsum(-1) - 1).clamp(min=0)
        valid = torch.cat([state.valid, fresh], dim=1)
        n_keys = valid.shape[1]
        queries = torch.full((ids.shape[0], 1), n_keys - 1, device=device)
        out, rows = self.forward(backbone, ids, valid.long(), position, state.cache, queries, key_index(valid))
        state.valid = valid
        if not bool(fresh.all()):
            state.compact()
        return out, rows

    def candidates(self, backbone: Backbone, s: Beams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NaN/inf guard and placeholder ban on a sample's logits; full log-probs and top-``N_can``."""
        logits = s.logits
        bad = ~torch.isfinite(logits).any(-1) | torch.isnan(logits).any(-1)
        if bad.any():
            s.guards += 1
            logits = torch.where(bad[:, None], torch.full_like(logits, NEG), torch.nan_to_num(logits, nan=NEG))
            logits[bad, backbone.eos_token_id] = 0.0
        logits[:, backbone.image_token_id] = NEG  # the placeholder is never answer text
        s.logits = logits
        cand_scores, cand = logits.topk(self.params.num_attn_candidates, dim=-1)
        return torch.log_softmax(logits, -1), cand_scores, cand

    def advance(self, backbone: Backbone, s: Beams, full: torch.Tensor, cand: torch.Tensor,
                cand_scores: torch.Tensor, cand_rows: torch.Tensor, max_new: int
                ) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """One beam step of one sample, with its rollback; what to feed next, or None when it is done.

        ``cand_rows`` [B, C, n+1] are the candidates' rows over the sample's n keys and themselves.
        Returns the beams' parents (the cache rows to keep), the ids to feed and whether the
        sample's response must first be cleared from the cache (a rollback: ids = kept response).
        """
        p = self.params
        sigma, threshold = self.settings(backbone)
        n_beams, eos = p.num_beams, backbone.eos_token_id
        n, t, start = s.prompt + s.t, s.t, s.start
        lo = self.window_start(s.omega.shape[1])
        phi, loc = overtrust(s.omega[:, lo:, lo:], cand_rows[..., start + lo:], sigma, p.overtrust_dtype)
        loc = loc + lo
        if n + 1 - start <= 10:
            penalty = -cand_rows[..., s.image_cols].sum(-1)
        else:
            penalty = phi
        step_scores = self.candidate_scores(s.logits, cand, cand_scores, penalty)
        logprobs = apply_processors(step_scores, torch.cat([s.ids.expand(n_beams, -1), s.seqs], dim=1), p)
        modes = loc.mode(dim=-1).values
        parents, tokens, s.scores, s.finished, s.is_open = self.beam_step(
            logprobs, s.scores, s.seqs, t, max_new, s.finished, s.is_open, eos)
        s.seqs = torch.cat([s.seqs[parents], tokens[:, None]], dim=1)
        s.records = torch.cat([s.records[parents], modes[parents][:, None]], dim=1)
        s.slots = torch.cat([s.slots, modes[:, None]], dim=1)
        s.omega = s.omega[parents]
        s.history.append(Step(parents, tokens, None, modes[parents], modes, s.scores, full, list(s.finished),
                              s.is_open))
        if not s.is_open or t + 1 >= max_new:
            return None
        if p.rollback == "reference":
            target = self.reference_rollback_target(s.slots, modes, start, s.prompt, t, threshold, s.used)
        else:
            target = self.rollback_target(s.records, start, s.prompt, t, threshold, s.used)
        if target is None:
            return parents, tokens[:, None], False
        if p.rollback != "reference":
            s.used[target] = s.used.get(target, 0) + 1
        s.slots = s.slots[:, :target + 1]
        s.seqs, s.records, s.omega, s.scores, s.finished, s.is_open = self.restore(s.history, target, s.pre, n_beams)
        step = s.history[target]
        ban = s.banned.setdefault(target, set())
        ban.update(zip(step.parents.tolist(), step.tokens.tolist()))
        logprobs = apply_processors(step.full, torch.cat([s.ids.expand(n_beams, -1), s.seqs], dim=1), p).clone()
        for b, tok in ban:
            logprobs[b, tok] = float("-inf")
        retry, tokens, s.scores, s.finished, s.is_open = self.beam_step(
            logprobs, s.scores, s.seqs, target, max_new, s.finished, s.is_open, eos)
        del s.history[target:]
        s.seqs = torch.cat([s.seqs[retry], tokens[:, None]], dim=1)
        s.records = torch.cat([s.records[retry], step.modes[retry][:, None]], dim=1)
        s.omega = s.omega[retry]
        s.history.append(Step(retry, tokens, None, step.modes[retry], step.modes, s.scores, step.full,
                              list(s.finished), s.is_open))
        s.rollbacks += 1
        if not s.is_open:
            return None
        return parents, s.seqs, True

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
