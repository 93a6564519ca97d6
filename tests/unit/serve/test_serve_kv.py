"""Block KV cache bookkeeping and paged attention against plain causal sdpa."""

import torch
import torch.nn.functional as F

from loraops.serve.context import ForwardContext, SeqSpan
from loraops.serve.kv import BlockKVCache, paged_attention


def test_reserve_release_and_slot_addresses():
    c = BlockKVCache(num_layers=1, kv_heads=1, head_dim=2, max_tokens=64, block_size=16)
    assert c.num_blocks == 4 and c.reserve(1, 20) and c.used_blocks == 2
    assert not c.reserve(2, 40) and c.used_blocks == 2          # nothing taken on refusal
    s = c.slots(1, 14, 18)
    table = c._tables[1]
    assert s.tolist() == [table[0] * 16 + 14, table[0] * 16 + 15, table[1] * 16, table[1] * 16 + 1]
    c.release(1)
    assert c.used_blocks == 0 and c.can_reserve(64)


class _Attn:
    layer_idx = 0


def _run(cache, spans, q, k, v, window=None):
    mod = _Attn()
    mod.serve_ctx = ForwardContext.build(torch.zeros(q.shape[2], dtype=torch.long), spans, cache)
    return paged_attention(mod, q, k, v, scaling=0.5, sliding_window=window)[0]


def test_paged_attention_equals_causal_sdpa_per_sequence_across_steps():
    torch.manual_seed(0)
    H, Hkv, D = 4, 2, 8
    cache = BlockKVCache(1, Hkv, D, max_tokens=128, block_size=4)
    lens = {1: 7, 2: 5}
    for sid, n in lens.items():
        cache.reserve(sid, n + 3)
    full = {sid: (torch.randn(1, H, n + 1, D), torch.randn(1, Hkv, n + 1, D), torch.randn(1, Hkv, n + 1, D))
            for sid, n in lens.items()}
    # step 1: both prompts packed; step 2: one new token each
    for step in (0, 1):
        qs, ks, vs, spans, lo = [], [], [], [], 0
        for sid, n in lens.items():
            a, b = (0, n) if step == 0 else (n, n + 1)
            q, k, v = (t[:, :, a:b] for t in full[sid])
            qs.append(q), ks.append(k), vs.append(v)
            spans.append(SeqSpan(lo, lo + b - a, a, cache.slots(sid, a, b), cache.slots(sid, 0, b)))
            lo += b - a
        out = _run(cache, spans, torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2))   # [1, T, H, D]
        for sid, sp in zip(lens, spans):
            q, k, v = full[sid]
            want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5, enable_gqa=True)
            b = sp.start + sp.hi - sp.lo
            torch.testing.assert_close(out[0, sp.lo:sp.hi], want[0, :, sp.start:b].transpose(0, 1))


def test_sliding_window_masks_old_keys():
    torch.manual_seed(1)
    cache = BlockKVCache(1, 1, 4, max_tokens=32, block_size=4)
    cache.reserve(1, 10)
    q, k, v = torch.randn(1, 1, 10, 4), torch.randn(1, 1, 10, 4), torch.randn(1, 1, 10, 4)
    out = _run(cache, [SeqSpan(0, 10, 0, cache.slots(1, 0, 10), cache.slots(1, 0, 10))], q, k, v, window=3)
    i = torch.arange(10)
    mask = (i[None] <= i[:, None]) & (i[None] > i[:, None] - 3)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)
    torch.testing.assert_close(out[0], want[0].transpose(0, 1))
