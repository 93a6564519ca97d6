"""Block KV cache bookkeeping and paged attention against plain causal sdpa."""

import torch
import torch.nn.functional as F

from loraops.serve.context import ForwardContext, SeqSpan
import copy

import pytest

from loraops.serve.kv import BATCHED_SPAN, BlockKVCache, paged_attention, paged_attention_reference


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


@pytest.mark.parametrize("window,softcap,Hkv", [(None, None, 2), (4, None, 2), (None, 30.0, 2), (3, 20.0, 2),
                                                (None, None, 1), (3, None, 1), (None, None, 4)])
@pytest.mark.parametrize("case", ["mixed", "decode", "one"])
def test_batched_short_span_attention_equals_per_sequence_reference(window, softcap, Hkv, case):
    """A step mixing decode tokens, decode tokens with speculative drafts (several new tokens after a
    history) and prompts, over sequences of different lengths: the fast path (one padded batch for
    every span of up to BATCHED_SPAN tokens, the long prompt alone) gives the per-sequence
    reference's output and cache. Also a step of decode tokens only (one per sequence) and of a
    single decoding sequence, with one, two or four key heads for four query heads."""
    torch.manual_seed(2)
    H, D = 4, 8
    cache = BlockKVCache(1, Hkv, D, max_tokens=256, block_size=4)
    history = {1: 9, 2: 3, 3: 14, 4: 0, 5: 1, 6: 0, 7: 5}   # tokens already cached; 0 = a new prompt
    prompt = {4: BATCHED_SPAN + 3, 6: 2, 1: 4, 7: BATCHED_SPAN}   # new tokens (default 1)
    if case != "mixed":
        history, prompt = ({1: 9, 2: 3, 3: 14, 5: 1, 7: 5} if case == "decode" else {3: 14}), {}
    spans, lo = [], 0
    for sid, n in history.items():
        cache.reserve(sid, n + 16)
        if n:
            cache.k[0][cache.slots(sid, 0, n)] = torch.randn(n, Hkv, D)
            cache.v[0][cache.slots(sid, 0, n)] = torch.randn(n, Hkv, D)
        new = prompt.get(sid, 1)
        spans.append(SeqSpan(lo, lo + new, n, cache.slots(sid, n, n + new), cache.slots(sid, 0, n + new)))
        lo += new
    q, k, v = torch.randn(1, H, lo, D), torch.randn(1, Hkv, lo, D), torch.randn(1, Hkv, lo, D)
    ref_cache = copy.deepcopy(cache)
    mod, ref = _Attn(), _Attn()
    mod.serve_ctx = ForwardContext.build(torch.zeros(lo, dtype=torch.long), spans, cache)
    ref.serve_ctx = ForwardContext.build(torch.zeros(lo, dtype=torch.long), spans, ref_cache)
    got = paged_attention(mod, q, k, v, scaling=0.3, sliding_window=window, softcap=softcap)[0]
    want = paged_attention_reference(ref, q, k, v, scaling=0.3, sliding_window=window, softcap=softcap)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(cache.k[0], ref_cache.k[0])
    torch.testing.assert_close(cache.v[0], ref_cache.v[0])
    plan = mod.serve_ctx.attn_plan
    if case != "mixed":
        assert plan.short_rows.shape == (len(history), 1) and not plan.prefill
        return
    assert plan.short_rows.shape == (6, BATCHED_SPAN) and len(plan.prefill) == 1
    assert plan.short_valid.sum() == 1 + 1 + 1 + 2 + 4 + BATCHED_SPAN
