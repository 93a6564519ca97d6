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
sequence alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ATTN_NAME = "loraops"


class BlockKVCache:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, max_tokens: int,
                 block_size: int = 16, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self.block_size = block_size
        self.num_blocks = max(1, max_tokens // block_size)
        n = self.num_blocks * block_size
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
    """q_pos: [n] -> bool [n, kv_len], True where query i may attend key j."""
    j = torch.arange(kv_len).unsqueeze(0)
    allowed = j <= q_pos.unsqueeze(1)
    if sliding_window is not None:
        allowed &= j > q_pos.unsqueeze(1) - sliding_window    # transformers' sliding_window_overlay
    return allowed


def paged_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask=None, scaling: float | None = None, dropout: float = 0.0,
                    sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """query: [1, H, T, D], key/value: [1, Hkv, T, D] (the packed new tokens of all sequences)
    -> ([1, T, H, D], None). Writes the new keys/values to the cache, then attends per sequence."""
    ctx = module.serve_ctx
    cache, layer = ctx.cache, module.layer_idx
    kc, vc = cache.k[layer], cache.v[layer]                        # [slots, Hkv, D]
    k_new, v_new = key[0].transpose(0, 1), value[0].transpose(0, 1)  # [T, Hkv, D]
    out = query.new_empty(query.shape[2], query.shape[1], query.shape[3])  # [T, H, D]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    for sp in ctx.spans:
        kc[sp.write_slots] = k_new[sp.lo:sp.hi].to(kc.dtype)
        vc[sp.write_slots] = v_new[sp.lo:sp.hi].to(vc.dtype)
        k = kc[sp.read_slots].transpose(0, 1).to(query.dtype)      # [Hkv, L, D]
        v = vc[sp.read_slots].transpose(0, 1).to(query.dtype)
        q = query[0, :, sp.lo:sp.hi]                               # [H, n, D]
        q_pos = torch.arange(sp.start, sp.start + sp.hi - sp.lo)
        mask = _span_mask(q_pos, k.shape[1], sliding_window)       # [n, L]
        if softcap is None:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        else:
            rep = q.shape[0] // k.shape[0]
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            w = torch.tanh((q @ k.transpose(1, 2)) * scale / softcap) * softcap
            o = torch.softmax(w.masked_fill(~mask, float("-inf")), dim=-1) @ v
        out[sp.lo:sp.hi] = o.transpose(0, 1)                       # [n, H, D]
    return out.unsqueeze(0), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, paged_attention)
