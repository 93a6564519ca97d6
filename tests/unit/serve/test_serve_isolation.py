"""Fault isolation: one request's bad values (a NaN/inf adapter slot, a token the model cannot take)
fail that request alone; every other row of its batch gives exactly the tokens it gives without it."""

import pytest
import torch
from lora_factory import random_adapter
from test_serve_engine import Collector, make_engine
from tiny import BUILDERS

from loraops.lora import save_adapter
from loraops.serve.sampling import SamplingParams

# three greedy requests (different lengths: padded attention spans) and one sampled
A_REQUESTS = [("ad0", [5, 6, 7, 8, 9], 0.0), ("ad1", [11, 12, 13], 0.0), ("tiny", [20, 21, 22, 23, 24, 25, 26], 0.0),
              ("ad1", [7, 8, 9, 10], 0.8)]


def poison(engine, model_id, kind):
    """Make `model_id`'s resident weights produce NaN/inf, as a file the readers let through would."""
    slot = engine.pool.resident()[engine.catalog.get(model_id).key]
    for t in engine.pool.tensors.values():
        if t.ranks[slot]:
            if kind == "nan":
                t.A[slot].fill_(float("nan"))
            elif kind == "inf_scale":
                t.scale[slot] = float("inf")
            else:                                          # huge but finite: overflows in the forward
                t.A[slot].mul_(1e20)
                t.B[slot].mul_(1e20)


def submit_a(engine):
    cols = [Collector() for _ in A_REQUESTS]
    for (model, prompt, temp), c in zip(A_REQUESTS, cols):
        engine.submit("A", model, prompt, SamplingParams(14, temperature=temp, seed=3), c)
    return cols


@pytest.mark.parametrize("arch,kind", [("gemma3", "nan"), ("llama", "inf_scale"), ("llama", "huge")])
def test_a_non_finite_adapter_fails_only_its_own_requests(arch, kind, tmp_path):
    engine, _ = make_engine(arch, tmp_path, n_adapters=2, max_slots=4)
    bad_adapter = random_adapter(BUILDERS[arch](0), 4, "all-linear", seed=5)
    engine.add_adapter("bad", save_adapter(bad_adapter, tmp_path / "bad"))
    engine.step()                                          # registered adapters into their slots
    poison(engine, "bad", kind)
    # B's requests queue first, so B's prefill takes the cache's first block, which a decoding row's
    # padded keys would read if padding pointed at a real slot.
    bad = [Collector(), Collector()]
    engine.submit("B", "bad", [5, 6, 7], SamplingParams(14, temperature=0.0), bad[0])
    engine.submit("B", "bad", [9, 8, 7, 6, 5, 4, 3, 2, 1, 30], SamplingParams(14, temperature=0.7, seed=1), bad[1])
    mixed = submit_a(engine)
    engine.run_until_idle()
    for c in bad:
        assert c.error is not None and c.error.code == "non_finite_output" and c.error.status == 500
        assert "bad" in c.error.message and not c.tokens
    alone = submit_a(engine)                                # the engine keeps serving: A alone, same engine
    engine.run_until_idle()
    for m, a in zip(mixed, alone):
        assert m.error is None and a.error is None and len(m.tokens) == 14
        assert m.tokens == a.tokens
    assert not engine.running and engine.cache.used_blocks == 0
    assert not any(engine.pool.pinned(s) for s in range(1, engine.pool.max_slots + 1))


def test_a_forward_that_raises_is_retried_in_halves_down_to_the_culprit(tmp_path):
    """A token id outside the embedding makes the whole packed forward raise: the runner bisects the
    batch, the request holding it fails with 500, the others decode as if it had not been there."""
    engine, _ = make_engine("llama", tmp_path, n_adapters=2)
    culprit = Collector()
    engine.submit("B", "ad0", [5, 6, engine.vocab_size + 7], SamplingParams(14, temperature=0.0), culprit)
    mixed = submit_a(engine)
    engine.run_until_idle()
    assert culprit.error is not None and culprit.error.code == "internal_error" and not culprit.tokens
    alone = submit_a(engine)
    engine.run_until_idle()
    assert [c.tokens for c in mixed] == [c.tokens for c in alone] and all(len(c.tokens) == 14 for c in alone)
    assert engine.cache.used_blocks == 0


def test_padded_attention_never_reads_another_sequences_keys():
    """The batched short-span path pads each row's keys to the longest row; the padding reads the
    cache's null slot, which stays zero whatever the other blocks hold."""
    from loraops.serve.context import ForwardContext, SeqSpan
    from loraops.serve.kv import BlockKVCache, paged_attention

    cache = BlockKVCache(1, 1, 4, max_tokens=64, block_size=4)
    for sid, n in ((0, 3), (1, 3), (2, 9)):               # sequence 0 (not in this batch) holds slot 0
        assert cache.reserve(sid, n + 1)
    cache.k[0][: cache.null_slot] = float("nan")          # every real slot poisoned ...
    cache.v[0][: cache.null_slot] = float("nan")
    spans = [SeqSpan(0, 1, 3, cache.slots(1, 3, 4), cache.slots(1, 0, 4)),
             SeqSpan(1, 2, 9, cache.slots(2, 9, 10), cache.slots(2, 0, 10))]
    for sp in spans:                                        # ... except what each sequence itself wrote
        cache.k[0][sp.read_slots] = 1.0
        cache.v[0][sp.read_slots] = 2.0

    class Attn:
        layer_idx = 0
    mod = Attn()
    mod.serve_ctx = ForwardContext.build(torch.zeros(2, dtype=torch.long), spans, cache)
    q, k, v = torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4), torch.full((1, 1, 2, 4), 2.0)
    out = paged_attention(mod, q, k, v)[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((1, 2, 1, 4), 2.0))      # equal up to the softmax's rounding
    assert torch.equal(cache.k[0][cache.null_slot], torch.zeros(1, 4))
