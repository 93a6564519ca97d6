"""ForwardContext: what one packed forward needs to know beyond the token ids.

The engine packs every running sequence's new tokens into one row ([1, T]) and, right before the
forward, assigns one ForwardContext to the `serve_ctx` attribute of every MultiLoRALinear and every
attention module (see `Engine._bind`). It is not a global: two engines on two models never share
one, and a module without a context (serve_ctx None) behaves like the plain base module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraops.serve.lora_kernels import segments


@dataclass
class SeqSpan:
    """One sequence's part of the packed row: tokens [lo, hi) at positions [start, start + hi - lo)."""

    lo: int
    hi: int
    start: int
    write_slots: torch.Tensor   # [hi - lo] flat KV-cache slots the new keys/values go to
    read_slots: torch.Tensor    # [start + hi - lo] flat KV-cache slots of the whole sequence so far


@dataclass
class ForwardContext:
    order: torch.Tensor                    # [T] token order grouping tokens by adapter slot
    segs: list[tuple[int, int, int]]       # (slot, start, end) in that order
    spans: list[SeqSpan]
    cache: object                          # kv.BlockKVCache

    @classmethod
    def build(cls, slot_per_token: torch.Tensor, spans: list[SeqSpan], cache) -> ForwardContext:
        order, segs = segments(slot_per_token)
        return cls(order, segs, spans, cache)
