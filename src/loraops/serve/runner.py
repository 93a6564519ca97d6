"""The model runner: pack one Batch into a single forward and return what it computed, as values.

`pack` lays every sequence's fed tokens end to end in one row ([1, T]) with their positions, KV
spans, LoRA slot terms, and the positions whose logits are kept (each sequence's last fed token
and each draft token; and, at the prefill of a sequence that asked for its prompt's log-probs,
every prompt position, which the head scores itself). `ModelRunner.run` binds a ForwardContext to
the LoRA layers, the attention modules and the head, runs the model once, and returns a
StepOutput: per sequence, its greedy tokens (screened by the head, else one batched argmax) or its
logits rows, its prompt scores, or the error that fails it alone.

Fault isolation. One request's values must never fail another's. Everything in the forward is
per token or per sequence (the attention's padding reads a zero cache slot, the LoRA kernels'
padding rows are discarded), so a NaN/inf from one sequence's adapter stays in that sequence's
rows; the head flags such rows before anything mixes rows (the int8 screen), and that sequence
gets a 500 non_finite_output. If the batched forward raises, the batch is run again in halves, down
to the sequence that raises, which alone fails with a 500.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from loraops.serve import kv
from loraops.serve.config import EngineConfig
from loraops.serve.context import ForwardContext, ScoreRows, SeqSpan
from loraops.serve.decoder import install_decoder
from loraops.serve.errors import InternalError, NonFiniteOutputError, ServeError
from loraops.serve.gemm import install_decode_linears
from loraops.serve.head import Scores, install_head
from loraops.serve.layers import install
from loraops.serve.scheduler import Batch

log = logging.getLogger("loraops.serve")


@dataclass
class Packed:
    """One batch laid out as the model's input. K kept rows: per sequence, its scored prompt rows
    (if any), then one for its last fed token and one per draft token, in batch order."""

    ids: torch.Tensor          # [1, T] token ids
    pos: torch.Tensor          # [1, T] their positions in their sequences
    keep: torch.Tensor         # [K] packed index of each kept row
    spans: list[SeqSpan]       # per sequence
    slots: torch.Tensor        # [J, T] term j's adapter slot per token (0: none)
    weights: torch.Tensor      # [J, T] term j's weight per token
    rows: list[int]            # [B] kept rows per sequence that give its next tokens (1 + its draft)
    greedy: torch.Tensor       # [K] bool: the row needs only its argmax
    scored: list[int]          # [B] scored prompt rows per sequence (0 unless it asked, at its prefill)
    score: ScoreRows | None    # the scored rows, their targets and top-k; None: none this step


def pack(batch: Batch, cache: kv.BlockKVCache) -> Packed:
    ids, pos, keep, spans, greedy, rows, scored, score_mask, targets = [], [], [], [], [], [], [], [], []
    top_k = 0
    for seq, new, draft in zip(batch.seqs, batch.new, batch.drafts):
        fed = new + draft
        lo, start, end = len(ids), seq.computed, seq.computed + len(fed)
        ids += fed
        pos += range(start, end)
        spans.append(SeqSpan(lo, len(ids), start, cache.slots(seq.id, start, end), cache.slots(seq.id, 0, end)))
        # Row j of a prompt predicts prompt token j + 1: rows 0..P-2 are scored, row P-1 samples as usual.
        n_scored = len(new) - 1 if seq.computed == 0 and seq.params.prompt_logprobs is not None else 0
        keep += range(lo, lo + n_scored)
        targets += new[1:1 + n_scored]
        top_k = max(top_k, seq.params.prompt_logprobs or 0) if n_scored else top_k
        keep += range(len(ids) - 1 - len(draft), len(ids))    # the last token's logits, and each draft's
        rows.append(len(draft) + 1)
        scored.append(n_scored)
        score_mask += [True] * n_scored + [False] * (len(draft) + 1)
        greedy += [False] * n_scored + [not seq.wants_logits] * (len(draft) + 1)
    slots, weights = pack_terms([(seq.slots, [w for _, w in seq.terms], sp.hi - sp.lo)
                                 for seq, sp in zip(batch.seqs, spans)])
    score = ScoreRows(torch.tensor(score_mask), torch.tensor(targets, dtype=torch.long), top_k) if targets else None
    return Packed(torch.tensor([ids]), torch.tensor([pos]), torch.tensor(keep), spans, slots, weights, rows,
                  torch.tensor(greedy, dtype=torch.bool), scored, score)


def pack_terms(rows: list[tuple[list[int], list[float], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence (slots of its terms, their weights, its token count) -> slots: [J, T] and
    weights: [J, T] over the packed tokens, J = the most terms of any sequence (at least 1).
    A sequence with fewer terms gets slot 0 (no adapter) in the others."""
    n_terms = max([len(slots) for slots, _, _ in rows] + [1])
    slots = [[s[j] if j < len(s) else 0 for s, _, n in rows for _ in range(n)] for j in range(n_terms)]
    weights = [[w[j] if j < len(w) else 0.0 for _, w, n in rows for _ in range(n)] for j in range(n_terms)]
    return torch.tensor(slots, dtype=torch.long), torch.tensor(weights)


@dataclass
class StepOutput:
    """Per sequence of the batch, in order, exactly one of: its kept rows' greedy tokens (a plain
    greedy sequence), its kept rows' logits [rows, V] (one that samples, follows a grammar, or asked
    for logprobs, penalties or a logit bias), or the error that fails it; and the scores of its
    prompt positions 0..P-2 when it asked for them at its prefill (else None)."""

    tokens: list[list[int] | None]
    logits: list[torch.Tensor | None]
    errors: list[ServeError | None]
    prompt: list[Scores | None] | None = None        # None: no sequence's prompt was scored

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = [None] * len(self.tokens)

    def __add__(self, other: StepOutput) -> StepOutput:
        return StepOutput(self.tokens + other.tokens, self.logits + other.logits, self.errors + other.errors,
                          self.prompt + other.prompt)

    @classmethod
    def failed(cls, n: int, error: ServeError) -> StepOutput:
        return cls([None] * n, [None] * n, [error] * n, [None] * n)


class ModelRunner:
    """Owns the model with its serving modules installed (LoRA slot layers, rows-first linears, the
    head, paged attention) and the KV cache; only the engine thread calls `run`."""

    def __init__(self, model: nn.Module, tokenizer, config: EngineConfig):
        self.model = model
        self.pool, self.lora_layers = install(model, config.max_slots, config.max_rank)
        install_decode_linears(model)                     # after install: it wraps nn.Linear paths
        self.head = install_head(model, tokenizer, screen=config.screen_head)
        kv.register()
        model.set_attn_implementation(kv.ATTN_NAME)
        self.attn_modules = [m for m in model.modules()
                             if hasattr(m, "layer_idx") and type(m).__name__.endswith("Attention")]
        self.decoder = install_decoder(model) if config.decoder else None   # last: it calls the modules above
        mc = model.config.get_text_config()
        head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
        dtype = next(model.parameters()).dtype
        self.cache = kv.BlockKVCache(mc.num_hidden_layers, kv_heads, head_dim, config.max_kv_tokens,
                                     config.block_size, dtype)
        self.max_context = min(getattr(mc, "max_position_embeddings", 2048), self.cache.capacity_tokens)

    def run(self, batch: Batch) -> StepOutput:
        try:
            return self.forward(batch)
        except Exception:
            if len(batch) == 1:
                log.exception("request %d failed in the forward", batch.seqs[0].id)
                return StepOutput.failed(1, InternalError("internal error while generating"))
            log.warning("a forward of %d sequences failed; running it again in halves to find the request "
                        "that fails", len(batch), exc_info=True)
            left, right = batch.split()
            return self.run(left) + self.run(right)

    def forward(self, batch: Batch) -> StepOutput:
        p = pack(batch, self.cache)
        screen = self.head.screen is not None and bool(p.greedy.any())
        ctx = ForwardContext.build(p.slots, p.spans, self.cache, p.weights,
                                   greedy_rows=p.greedy if screen else None, score=p.score)
        self._bind(ctx)
        try:
            with torch.no_grad():
                logits = self.model(input_ids=p.ids, position_ids=p.pos, use_cache=False,
                                    logits_to_keep=p.keep).logits[0]     # [K - S, V], or [K - S - G, V] screened
            head = self.head.take()
        finally:
            self._bind(None)
        finite = head.finite.tolist()
        screened = head.tokens.tolist() if head.tokens is not None else None
        # Unscreened greedy rows: one batched argmax over the fp32 logits (2x faster than one call per row).
        argmax = logits.argmax(-1).tolist() if not screen and bool(p.greedy.any()) else None
        out = StepOutput([], [], [], [])
        row = logit_row = score_row = 0                    # over kept rows, returned logits rows, scored rows
        for seq, s, n in zip(batch.seqs, p.scored, p.rows):
            greedy = not seq.wants_logits
            ok = all(finite[row:row + s + n])
            out.errors.append(None if ok else non_finite(seq))
            out.prompt.append(head.scores[score_row:score_row + s] if ok and s else None)
            score_row += s
            row += s
            if greedy and screen:                          # its tokens came from the head's screen
                out.tokens.append(screened[row:row + n] if ok else None)
                out.logits.append(None)
            else:                                          # its rows are in `logits`
                out.tokens.append(argmax[logit_row:logit_row + n] if ok and greedy else None)
                out.logits.append(logits[logit_row:logit_row + n] if ok and not greedy else None)
                logit_row += n
            row += n
        return out

    def _bind(self, ctx: ForwardContext | None) -> None:
        for m in self.lora_layers:
            m.serve_ctx = ctx
        for m in self.attn_modules:
            m.serve_ctx = ctx
        self.head.serve_ctx = ctx


def non_finite(seq) -> NonFiniteOutputError:
    log.warning("request %d (%s): the forward produced NaN/inf in its rows; failing it alone", seq.id, seq.model)
    hint = f"; its adapters ({', '.join(seq.model.adapters)}) may hold non-finite or very large weights" \
        if seq.terms else ""
    return NonFiniteOutputError(f"the model produced non-finite values (NaN or infinity) for this request{hint}")
