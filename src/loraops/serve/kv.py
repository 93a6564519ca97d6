"""A preallocated, block-paged KV cache and the attention function that reads and writes it.

Per layer, keys and values live in one tensor [num_blocks * block_size, kv_heads, head_dim]; a
sequence owns a list of blocks (its block table) and its token at position p sits at flat slot
table[p // block_size] * block_size + p % block_size. A sequence reserves blocks for its whole
budget (prompt + max_tokens) when it is admitted, so a running sequence never runs out of cache
and nothing has to be preempted; the cost is that reserved-but-unused tail blocks are idle until
the sequence finishes. Sliding-window layers keep every token and mask by distance.

`paged_attention` is registered with transformers' AttentionInterface as "loraops", so the
model classes keep their own projections, norms and rotary embeddings and only the attention
kernel is ours. Its plain semantics, per sequence, are causal softmax attention over the
sequence's cached keys (within `sliding_window` when given), i.e. what sdpa computes for that
sequence alone (`paged_attention_reference`). The fast path batches every decoding sequence (with
its speculative draft, if any) into one padded sdpa call per layer (`AttentionPlan`): one call
instead of one per sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loraops.serve.config import BATCHED_SPAN   # spans of up to this many new tokens share one padded call

ATTN_NAME = "loraops"


class BlockKVCache:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, max_tokens: int,
                 block_size: int = 16, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self.block_size = block_size
        self.num_blocks = max(1, max_tokens // block_size)
        n = self.num_blocks * block_size
        # One more slot that nothing writes: padded key positions read it, so a row's masked-out
        # padding is 0, never another sequence's stale (possibly NaN) keys — 0 weight times a NaN
        # value is NaN, and would leak one request's numerics into another's.
        self.null_slot = n
        n += 1
        self.k = [torch.zeros(n, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(n, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self._free = list(range(self.num_blocks - 1, -1, -1))
        self._tables: dict[int, list[int]] = {}

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def can_reserve(self, tokens: int) -> bool:
        return self.blocks_for(tokens) <= len(self._free)

    def reserve(self, seq_id: int, tokens: int) -> bool:
        """Give `seq_id` blocks for `tokens` tokens. False (and nothing taken) if they are not free."""
        need = self.blocks_for(tokens)
        if need > len(self._free):
            return False
        self._tables[seq_id] = [self._free.pop() for _ in range(need)]
        return True

    def release(self, seq_id: int) -> None:
        self._free.extend(reversed(self._tables.pop(seq_id, [])))

    def slots(self, seq_id: int, start: int, end: int) -> torch.Tensor:
        """Flat slots of positions [start, end) of `seq_id`: [end - start]."""
        table = torch.tensor(self._tables[seq_id], dtype=torch.long)
        pos = torch.arange(start, end)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size


def _span_mask(q_pos: torch.Tensor, kv_len: int, sliding_window: int | None) -> torch.Tensor:
    """q_pos: [..., n] -> bool [..., n, kv_len], True where query i may attend key j."""
    j = torch.arange(kv_len)
    allowed = j <= q_pos[..., None]
    if sliding_window is not None:
        allowed &= j > q_pos[..., None] - sliding_window      # transformers' sliding_window_overlay
    return allowed


@dataclass
class AttentionPlan:
    """How one packed forward's sequences are attended, computed once and shared by every layer.

    Short spans (a decoding sequence's one new token, or that token plus its speculative draft:
    at most BATCHED_SPAN) are attended together in one padded batch [B, n] of queries; long spans
    (prefills) one by one, since there are few of them per step. A padded query slot repeats its
    span's last query and is never written back."""

    write_slots: torch.Tensor      # [T] cache slot of every packed token, in packed order
    short_rows: torch.Tensor       # [B, n] packed index of each short span's i-th query (padded: its last)
    short_valid: torch.Tensor      # [B, n] True for real (not padding) queries
    short_pos: torch.Tensor        # [B, n] position of each query in its sequence
    short_slots: torch.Tensor      # [B, L] cache slots of each short span's keys (padded: the null slot)
    prefill: list                  # [SeqSpan] the spans with more than BATCHED_SPAN new tokens
    _masks: dict

    @classmethod
    def build(cls, spans, pad_slot: int) -> AttentionPlan:
        """pad_slot: a cache slot that holds zeros (BlockKVCache.null_slot)."""
        short = [sp for sp in spans if sp.hi - sp.lo <= BATCHED_SPAN]
        n = max((sp.hi - sp.lo for sp in short), default=0)
        width = max((len(sp.read_slots) for sp in short), default=0)
        slots = torch.full((len(short), width), pad_slot, dtype=torch.long)
        for b, sp in enumerate(short):
            slots[b, : len(sp.read_slots)] = sp.read_slots
        i = torch.arange(n)
        size = torch.tensor([sp.hi - sp.lo for sp in short], dtype=torch.long)[:, None]      # [B, 1]
        last = torch.minimum(i[None], size - 1)                                             # [B, n]
        rows = torch.tensor([sp.lo for sp in short], dtype=torch.long)[:, None] + last
        pos = torch.tensor([sp.start for sp in short], dtype=torch.long)[:, None] + last
        return cls(torch.cat([sp.write_slots for sp in spans]), rows, i[None] < size, pos, slots,
                   [sp for sp in spans if sp.hi - sp.lo > BATCHED_SPAN], {})

    def short_mask(self, sliding_window: int | None) -> torch.Tensor:
        """-> bool [B, 1, n, L]: query i of row b may attend key j (causal, within its window).
        Memoised per window (a pure function of the plan: the first layer with that window builds it)."""
        if sliding_window not in self._masks:
            mask = _span_mask(self.short_pos, self.short_slots.shape[1], sliding_window)   # [B, n, L]
            self._masks[sliding_window] = mask[:, None]
        return self._masks[sliding_window]

    def short_bias(self, sliding_window: int | None, heads: int) -> torch.Tensor:
        """-> fp32 [B * heads, n, L]: 0 where query i of row b may attend key j, -inf elsewhere,
        repeated for every head (the additive mask `_attend_short` adds in its first matmul)."""
        key = ("bias", sliding_window, heads)
        if key not in self._masks:
            allowed = self.short_mask(sliding_window)                                     # [B, 1, n, L]
            bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
            b, _, n, width = bias.shape
            self._masks[key] = bias.expand(b, heads, n, width).reshape(b * heads, n, width).contiguous()
        return self._masks[key]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
            softcap: float | None) -> torch.Tensor:
    """q: [..., H, n, D], k/v: [..., Hkv, L, D], mask: bool broadcastable to [..., H, n, L] -> [..., H, n, D]."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    rep = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    w = torch.tanh((q @ k.transpose(-1, -2)) * scale / softcap) * softcap
    return torch.softmax(w.masked_fill(~mask, float("-inf")), dim=-1) @ v


def _attend_short(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                  softcap: float | None) -> torch.Tensor:
    """The short spans' attention as three batched matmul-sized ops: what `_attend` computes, without
    sdpa's per-call setup and its repeated keys for grouped-query heads (3x faster at a decode step's
    sizes on CPU, bench/step.py). q: [B, H, n, D]; k/v: [B, L, Hkv, D] as gathered from the cache;
    bias: [B * H, n, L] additive mask (`AttentionPlan.short_bias`) -> [B, n, H, D]."""
    b, h, n, d = q.shape
    width, kv_heads = k.shape[1], k.shape[2]
    rep = h // kv_heads                       # query head j * rep + i uses key head j (transformers' repeat_kv)
    qq = q.reshape(b * kv_heads, rep * n, d)                                        # [B * Hkv, rep * n, D]
    kk = k.view(b, width, d) if kv_heads == 1 else k.permute(0, 2, 1, 3).reshape(b * kv_heads, width, d)
    vv = v.view(b, width, d) if kv_heads == 1 else v.permute(0, 2, 1, 3).reshape(b * kv_heads, width, d)
    bias = bias.view(b * kv_heads, rep * n, width)
    if softcap is None:
        w = torch.baddbmm(bias, qq, kk.transpose(1, 2), alpha=scale)                # [B * Hkv, rep * n, L]
    else:
        w = torch.bmm(qq, kk.transpose(1, 2)).mul_(scale / softcap).tanh_().mul_(softcap).add_(bias)
    out = torch.bmm(torch.softmax(w, dim=-1), vv)                                   # [B * Hkv, rep * n, D]
    return out.view(b, h, n, d).transpose(1, 2)


def paged_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask=None, scaling: float | None = None, dropout: float = 0.0,
                    sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """query: [1, H, T, D], key/value: [1, Hkv, T, D] (the packed new tokens of all sequences)
    -> ([1, T, H, D], None). Writes the new keys/values to the cache in one copy, attends all short
    spans (decode tokens and drafts) in one padded batch and each prefill span on its own. Same result as
    `paged_attention_reference`."""
    ctx = module.serve_ctx
    plan, layer = ctx.attn_plan, module.layer_idx
    kc, vc = ctx.cache.k[layer], ctx.cache.v[layer]                # [slots, Hkv, D]
    kc.index_copy_(0, plan.write_slots, key[0].transpose(0, 1).to(kc.dtype))     # [T, Hkv, D]
    vc.index_copy_(0, plan.write_slots, value[0].transpose(0, 1).to(vc.dtype))
    out = query.new_empty(query.shape[2], query.shape[1], query.shape[3])  # [T, H, D]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    if plan.short_rows.numel():
        b, n = plan.short_rows.shape
        width, heads = plan.short_slots.shape[1], query.shape[1]
        q = query[0].index_select(1, plan.short_rows.flatten()).view(heads, b, n, -1).transpose(0, 1)  # [B, H, n, D]
        # index_select, not kc[slots]: advanced indexing is ~7x slower for this gather on CPU.
        flat = plan.short_slots.flatten()
        k = kc.index_select(0, flat).view(b, width, *kc.shape[1:]).to(query.dtype)    # [B, L, Hkv, D]
        v = vc.index_select(0, flat).view(b, width, *vc.shape[1:]).to(query.dtype)
        res = _attend_short(q, k, v, plan.short_bias(sliding_window, heads), scale, softcap)   # [B, n, H, D]
        if n == 1:                                                  # decode only: every query is real
            out.index_copy_(0, plan.short_rows[:, 0], res[:, 0])
        else:
            out[plan.short_rows[plan.short_valid]] = res[plan.short_valid]
    for sp in plan.prefill:
        k = kc.index_select(0, sp.read_slots).transpose(0, 1).to(query.dtype)      # [Hkv, L, D]
        v = vc.index_select(0, sp.read_slots).transpose(0, 1).to(query.dtype)
        q_pos = torch.arange(sp.start, sp.start + sp.hi - sp.lo)
        mask = _span_mask(q_pos, k.shape[1], sliding_window)       # [n, L]
        out[sp.lo:sp.hi] = _attend(query[0, :, sp.lo:sp.hi], k, v, mask, scale, softcap).transpose(0, 1)
    return out.unsqueeze(0), None


def paged_attention_reference(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              scaling: float | None = None, sliding_window: int | None = None,
                              softcap: float | None = None) -> torch.Tensor:
    """The plain definition, one sequence at a time: write its new keys/values, then causal attention
    over its cached keys. Same shapes as `paged_attention`; returns [1, T, H, D]."""
    ctx = module.serve_ctx
    kc, vc = ctx.cache.k[module.layer_idx], ctx.cache.v[module.layer_idx]
    out = query.new_empty(query.shape[2], query.shape[1], query.shape[3])
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    for sp in ctx.spans:
        kc[sp.write_slots] = key[0, :, sp.lo:sp.hi].transpose(0, 1).to(kc.dtype)
        vc[sp.write_slots] = value[0, :, sp.lo:sp.hi].transpose(0, 1).to(vc.dtype)
        k = kc[sp.read_slots].transpose(0, 1).to(query.dtype)
        v = vc[sp.read_slots].transpose(0, 1).to(query.dtype)
        q_pos = torch.arange(sp.start, sp.start + sp.hi - sp.lo)
        mask = _span_mask(q_pos, k.shape[1], sliding_window)
        out[sp.lo:sp.hi] = _attend(query[0, :, sp.lo:sp.hi], k, v, mask, scale, softcap).transpose(0, 1)
    return out.unsqueeze(0)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, paged_attention)
