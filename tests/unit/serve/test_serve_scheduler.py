"""The waiting queue (bounded, round-robin and fair-share across tenants), and the scheduler and
postprocessor stages on their own, without a model."""

import pytest
from lora_factory import random_adapter
from tiny import tiny_llama, tiny_tokenizer

from loraops.lora import save_adapter
from loraops.serve.catalog import AdapterCatalog
from loraops.serve.config import EngineConfig
from loraops.serve.errors import BadRequestError, OverloadedError
from loraops.serve.events import DoneEvent, ErrorEvent, TokenEvent
from loraops.serve.kv import BlockKVCache
from loraops.serve.layers import adaptable_paths
from loraops.serve.model_ref import ModelRef
from loraops.serve.postprocess import Postprocessor
from loraops.serve.runner import StepOutput
from loraops.serve.sampling import SamplingParams, TextStream
from loraops.serve.scheduler import Batch, FairQueue, Scheduler, Sequence
from loraops.serve.slots import SlotPool

MODEL, TOKENIZER = tiny_llama(0), tiny_tokenizer()     # the pool's shapes and the detokenizer: nothing runs


def seq(i, tenant):
    return Sequence(i, tenant, ModelRef.parse("m"), [1, 2], SamplingParams(), lambda ev: None, stream=None)


def test_a_flooding_tenant_does_not_starve_others():
    q = FairQueue(100)
    for i in range(10):
        q.push(seq(i, "flood"))
    q.push(seq(100, "b"))
    q.push(seq(101, "c"))
    order = [q.pick(lambda s: True).tenant for _ in range(6)]
    assert order == ["flood", "b", "c", "flood", "flood", "flood"]


def test_within_a_tenant_order_is_fifo_and_unready_requests_are_skipped():
    q = FairQueue(10)
    for i in range(3):
        q.push(seq(i, "t"))
    assert q.pick(lambda s: s.id != 0).id == 1
    assert q.pick(lambda s: True).id == 0
    assert q.pick(lambda s: False) is None and len(q) == 1


def test_full_queue_is_refused():
    q = FairQueue(2)
    q.push(seq(0, "a"))
    q.push(seq(1, "b"))
    with pytest.raises(OverloadedError):
        q.push(seq(2, "c"))


def test_remove_takes_a_cancelled_request_out():
    q = FairQueue(5)
    s = seq(0, "a")
    q.push(s)
    assert q.remove(s) and len(q) == 0 and not q.remove(s)


def test_a_flooding_tenant_gets_503s_while_others_are_still_queued():
    """The queue is full of one tenant's requests: another tenant's request takes the place of the
    flood's newest (which is handed back to be refused), and the flood is refused from then on."""
    q = FairQueue(8)
    flood = [seq(i, "flood") for i in range(8)]
    for s in flood:
        assert q.push(s) is None
    assert q.push(seq(100, "b")) is flood[-1] and len(q) == 8
    with pytest.raises(OverloadedError):
        q.push(seq(9, "flood"))
    for i in range(1, 4):                                  # b may hold up to its share: 8 // 2
        assert q.push(seq(100 + i, "b")).tenant == "flood"
    with pytest.raises(OverloadedError):
        q.push(seq(104, "b"))
    assert q.push(seq(200, "c")).tenant in ("flood", "b")  # a third tenant: shares of 8 // 3
    assert len(q) == 8 and {s.tenant for s in q.waiting()} == {"flood", "b", "c"}


def test_a_tenant_at_its_share_never_displaces_another():
    q = FairQueue(2)
    assert q.push(seq(0, "a")) is None and q.push(seq(1, "b")) is None
    with pytest.raises(OverloadedError):                   # shares of 2 // 3 -> 1: nobody holds more
        q.push(seq(2, "c"))
    with pytest.raises(OverloadedError):
        q.push(seq(3, "a"))


# ---- the scheduler and the postprocessor, without a model --------------------------------------

def _parts(max_batch=4, max_queue=8, speculate=0):
    """A Scheduler and a Postprocessor over a real KV cache, slot pool and catalog; no model runs."""
    config = EngineConfig(max_slots=2, max_rank=8, max_batch=max_batch, max_queue=max_queue, max_kv_tokens=256,
                          block_size=4, speculate=speculate)
    pool = SlotPool.for_model(MODEL, adaptable_paths(MODEL), config.max_slots, config.max_rank)
    catalog = AdapterCatalog(pool, "tiny", None)
    scheduler = Scheduler(config, BlockKVCache(1, 1, 2, config.max_kv_tokens, config.block_size), pool, catalog)
    return scheduler, Postprocessor(scheduler, eos_ids={0}), catalog


def _request(scheduler, i, tenant, model, prompt, max_tokens, events):
    params = SamplingParams(max_tokens, temperature=0.0)
    s = Sequence(i, tenant, ModelRef.parse(model), prompt, params, events.append, TextStream(TOKENIZER))
    scheduler.add(s)
    return s


def test_schedule_admits_round_robin_within_the_batch_and_feeds_prompts_then_last_tokens():
    scheduler, post, _ = _parts(max_batch=3)
    events = []
    seqs = [_request(scheduler, i, t, "tiny", [5, 6, 7 + i], 4, events)
            for i, t in enumerate(["a", "a", "a", "b"])]
    batch = scheduler.schedule()
    assert [s.id for s in batch.seqs] == [0, 3, 1]               # a, b, a: round-robin, then the batch is full
    assert batch.new == [s.prompt for s in batch.seqs] and batch.drafts == [[], [], []]
    assert scheduler.cache.used_blocks == 3 * 2                  # 3 + 4 tokens each, blocks of 4
    post(batch, StepOutput([[40], [41], [42]], [None] * 3, [None] * 3))
    assert [s.output for s in batch.seqs] == [[40], [41], [42]] and all(s.computed == 3 for s in batch.seqs)
    batch = scheduler.schedule()
    assert batch.new == [[40], [41], [42]] and len(scheduler.waiting) == 1 and seqs[2] not in batch.seqs


def test_postprocess_accepts_the_matching_draft_prefix_and_finishes_at_max_tokens():
    scheduler, post, _ = _parts(speculate=4)
    events_a, events_b = [], []
    a = _request(scheduler, 1, "a", "tiny", [5, 6, 7], 4, events_a)
    b = _request(scheduler, 2, "b", "tiny", [5, 6, 8], 4, events_b)
    batch = scheduler.schedule()
    post(batch, StepOutput([[30], [31]], [None, None], [None, None]))
    # a drafted [9, 10, 11]; its rows say 9, 10, 12: two accepted, then 12 ends it at max_tokens (4)
    post(Batch([a, b], [[30], [31]], [[9, 10, 11], []]),
         StepOutput([[9, 10, 12, 13], None], [None, None], [None, BadRequestError("b's rows failed")]))
    assert a.output == [30, 9, 10, 12] and a.computed == 3 + 1 + 2 and a.finished
    assert [type(e) for e in events_a] == [TokenEvent] * 4 + [DoneEvent] and events_a[-1].finish_reason == "length"
    assert isinstance(events_b[-1], ErrorEvent) and b.finished and b.output == [31]
    assert post.spec_stats == [3, 2] and not scheduler.running and scheduler.cache.used_blocks == 0


def test_schedule_waits_for_an_adapter_load_and_fails_waiters_of_a_failed_one(tmp_path):
    scheduler, _, catalog = _parts()
    path = str(save_adapter(random_adapter(MODEL, 4, ["q_proj"], seed=1), tmp_path / "ad"))
    entry = catalog.register("ad", path)
    catalog.apply()
    scheduler.pool.unload(entry.key)                          # registered, not resident
    events = []
    s = _request(scheduler, 1, "a", "ad", [5, 6], 2, events)
    assert scheduler.schedule() is None and catalog.pending()   # asked the loader, still waiting
    catalog.load_pending()
    batch = scheduler.schedule()
    assert batch.seqs == [s] and s.slots == [scheduler.pool.resident()[entry.key]]
    scheduler.finish(s)
    scheduler.pool.unload(entry.key)
    (tmp_path / "ad" / "adapter_model.safetensors").write_bytes(b"junk")
    waiting = _request(scheduler, 2, "a", "ad", [5, 6], 2, events)
    scheduler.schedule()
    catalog.load_pending()
    assert scheduler.schedule() is None and not len(scheduler.waiting)
    assert isinstance(events[-1], ErrorEvent) and events[-1].error.code == "adapter_unavailable"
    assert not waiting.slots and scheduler.idle()
