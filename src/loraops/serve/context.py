"""ForwardContext: what one packed forward needs to know beyond the token ids.

The runner packs every running sequence's new tokens into one row ([1, T]) and, right before the
forward, assigns one ForwardContext to the `serve_ctx` attribute of every MultiLoRALinear, every
attention module and the head (see `ModelRunner._bind`). It is complete before the forward and only
read inside it: what the forward finds out (the head's greedy tokens) comes back as values, never
written here. It is not a global: two engines on two models never share one, and a module without a
context (serve_ctx None) behaves like the plain base module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraops.serve.kv import AttentionPlan
from loraops.serve.lora_kernels import LoRATerm


@dataclass
class SeqSpan:
    """One sequence's part of the packed row: tokens [lo, hi) at positions [start, start + hi - lo)."""

    lo: int
    hi: int
    start: int
    write_slots: torch.Tensor   # [hi - lo] flat KV-cache slots the new keys/values go to
    read_slots: torch.Tensor    # [start + hi - lo] flat KV-cache slots of the whole sequence so far


@dataclass(frozen=True)
class ScoreRows:
    """Kept positions whose log-probabilities the head computes itself (prompt log-probs): the
    [S, V] logits of a long prompt never exist at once."""

    rows: torch.Tensor          # [K] bool over the kept positions
    targets: torch.Tensor       # [S] the token whose log-prob each scored row gives (the next prompt token)
    k: int                      # top log-probs per row (the most any scored sequence asked for)


@dataclass
class ForwardContext:
    terms: list[LoRATerm]                  # gathered LoRA terms: one, or more for composed requests
    spans: list[SeqSpan]
    cache: object                          # kv.BlockKVCache
    attn_plan: AttentionPlan | None = None     # how the spans are attended (None: no spans)
    greedy_rows: torch.Tensor | None = None    # [K] bool: kept positions whose token head.py screens
    score: ScoreRows | None = None             # kept positions the head scores (prompt log-probs)

    @classmethod
    def build(cls, slot_per_token: torch.Tensor, spans: list[SeqSpan], cache,
              weights: torch.Tensor | None = None, greedy_rows: torch.Tensor | None = None,
              score: ScoreRows | None = None) -> ForwardContext:
        """slot_per_token: [T] (one adapter per token) or [J, T] (term j's slot per token, 0: none);
        weights: [J, T] per-token term weights, None: all 1; greedy_rows, score as the fields."""
        slots = slot_per_token if slot_per_token.dim() == 2 else slot_per_token[None]   # [J, T]
        terms = []
        for j, idx in enumerate(slots):
            w = None if weights is None else weights[j]
            if w is not None and bool((w[idx != 0] == 1).all()):
                w = None                            # weight 1 everywhere: exactly the single-adapter path
            terms.append(LoRATerm.of(idx, w))
        plan = AttentionPlan.build(spans, cache.null_slot) if spans else None
        return cls(terms=terms, spans=spans, cache=cache, attn_plan=plan, greedy_rows=greedy_rows, score=score)
