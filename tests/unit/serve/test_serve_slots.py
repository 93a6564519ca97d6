"""Slot pool: LRU eviction, pinning, mixed ranks, refusals."""

import pytest
import torch
from lora_factory import random_adapter
from tiny import tiny_llama

from loraops.errors import AdapterMismatchError
from loraops.lora import LoRAConfig
from loraops.serve.errors import UnsupportedAdapterError
from loraops.serve.layers import adaptable_paths
from loraops.serve.slots import SlotPool


@pytest.fixture
def model():
    return tiny_llama(0)


def pool_for(model, slots=2, rank=8):
    return SlotPool.for_model(model, adaptable_paths(model), slots, rank)


def test_mixed_ranks_are_zero_padded(model):
    pool = pool_for(model)
    a = random_adapter(model, 3, ["q_proj"], seed=1)
    slot = pool.load("a", a)
    path = "model.layers.0.self_attn.q_proj"
    t = pool.tensors[path]
    assert torch.equal(t.A[slot, :3], a.modules[path].A) and not t.A[slot, 3:].any()
    assert torch.equal(t.B[slot, :, :3], a.modules[path].B) and not t.B[slot, :, 3:].any()
    assert t.ranks[slot] == 3 and pool.tensors["model.layers.0.self_attn.k_proj"].ranks[slot] == 0
    assert not t.A[0].any() and t.ranks[0] == 0


def test_least_recently_used_is_evicted(model):
    pool = pool_for(model)
    ads = [random_adapter(model, 2, ["q_proj"], seed=i) for i in range(3)]
    sa, sb = pool.load("a", ads[0]), pool.load("b", ads[1])
    pool.lookup("a")                                         # a is now more recent than b
    sc = pool.load("c", ads[2])
    assert sc == sb and set(pool.resident()) == {"a", "c"} and pool.stats.evictions == 1
    assert pool.resident()["a"] == sa


def test_pinned_slots_are_never_evicted(model):
    pool = pool_for(model)
    ads = [random_adapter(model, 2, ["q_proj"], seed=i) for i in range(3)]
    pool.pin(pool.load("a", ads[0]))
    pool.pin(pool.load("b", ads[1]))
    assert pool.load("c", ads[2]) is None
    pool.unpin(pool.resident()["a"])
    assert pool.load("c", ads[2]) is not None and set(pool.resident()) == {"b", "c"}


def test_unload_refuses_a_pinned_slot_and_zeroes_a_free_one(model):
    pool = pool_for(model)
    slot = pool.load("a", random_adapter(model, 2, ["q_proj"], seed=0))
    pool.pin(slot)
    assert not pool.unload("a")
    pool.unpin(slot)
    assert pool.unload("a") and not pool.resident()
    assert not pool.tensors["model.layers.0.self_attn.q_proj"].A[slot].any()


def test_hits_and_misses_are_counted(model):
    pool = pool_for(model)
    pool.lookup("x")
    pool.load("x", random_adapter(model, 2, ["q_proj"], seed=0))
    pool.lookup("x")
    assert (pool.stats.hits, pool.stats.misses) == (1, 1)


def test_dora_is_refused_with_a_clear_error(model):
    a = random_adapter(model, 2, ["q_proj"], seed=0)
    a.config = LoRAConfig(r=2, alpha=4, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(UnsupportedAdapterError, match="DoRA"):
        pool_for(model).check(a)


def test_rank_over_the_pool_limit_is_refused(model):
    with pytest.raises(UnsupportedAdapterError, match="max rank"):
        pool_for(model, rank=4).check(random_adapter(model, 8, ["q_proj"], seed=0))


def test_adapter_for_another_shape_is_refused(model):
    a = random_adapter(model, 2, ["q_proj"], seed=0)
    m = a.modules["model.layers.0.self_attn.q_proj"]
    m.A = torch.zeros(2, 7)
    with pytest.raises(AdapterMismatchError):
        pool_for(model).check(a)
