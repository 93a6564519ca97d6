"""The adapter catalog and its loader: a failing load fails only the requests waiting for that
adapter, the loader thread keeps working, and a forced load stays forced."""

import threading

import pytest
from lora_factory import random_adapter
from test_serve_engine import Collector, make_engine
from tiny import tiny_llama

from loraops.errors import BaseMismatchError, LoraOpsError
from loraops.lora import read_adapter, save_adapter
from loraops.serve.catalog import AdapterCatalog
from loraops.serve.layers import adaptable_paths
from loraops.serve.sampling import SamplingParams
from loraops.serve.slots import SlotPool


def greedy(engine, model, tokens=4):
    c = Collector()
    engine.submit("t", model, [5, 6, 7], SamplingParams(tokens, temperature=0.0), c)
    return c


def test_a_corrupted_adapter_fails_its_requests_and_the_loader_keeps_working(tmp_path):
    """loraops.json rewritten to `[1]` after registration (an AttributeError deep in the base check):
    the request for it gets 503 adapter_unavailable, the loader thread lives on, other adapters load,
    and the same adapter serves again once its file is repaired."""
    engine, paths = make_engine("llama", tmp_path, n_adapters=3, max_slots=1)
    meta = tmp_path / "ad1" / "loraops.json"
    good = '{"base_name": "tiny"}'
    meta.write_text(good)
    engine.add_adapter("ad1", paths["ad1"])                  # registered while its files were fine
    meta.write_text("[1]")
    engine.start()
    try:
        first = greedy(engine, "ad0")                        # resident: ad1 is not
        assert first.finished.wait(30) and first.error is None
        broken = greedy(engine, "ad1")
        assert broken.finished.wait(30)
        assert broken.error.status == 503 and broken.error.code == "adapter_unavailable" and not broken.tokens
        other = greedy(engine, "ad2")                        # needs the loader too
        assert other.finished.wait(30) and other.error is None and len(other.tokens) == 4
        assert engine.alive()
        meta.write_text(good)
        repaired = greedy(engine, "ad1")
        assert repaired.finished.wait(30) and repaired.error is None
    finally:
        engine.stop()


def test_an_unforeseen_exception_in_a_reader_is_a_failed_load_not_a_dead_loader(tmp_path):
    model = tiny_llama(0)
    pool = SlotPool.for_model(model, adaptable_paths(model), max_slots=2, max_rank=8)
    path = str(save_adapter(random_adapter(model, 4, ["q_proj"], seed=1), tmp_path / "ok"))
    broken = {"now": True}

    def read(p):
        if broken["now"]:
            raise KeyError("a reader bug")
        return read_adapter(p)
    loaded = threading.Event()
    catalog = AdapterCatalog(pool, "tiny", None, wake=loaded.set, read=read)
    with pytest.raises(LoraOpsError, match="KeyError"):     # on registration: a typed, clear error
        catalog.register("y", path)
    broken["now"] = False
    entry = catalog.register("y", path)
    catalog.apply()
    assert pool.unload(entry.key) and entry.key not in pool.resident()
    catalog.start()
    try:
        for fails in (True, False):
            broken["now"] = fails
            loaded.clear()
            catalog.request(entry.key)
            assert loaded.wait(30)
            failed = catalog.apply()
            if fails:
                assert [f.key for f in failed] == [entry.key] and failed[0].error.code == "adapter_unavailable"
                assert "y" in failed[0].error.message and str(tmp_path) not in failed[0].error.message
            else:
                assert not failed and entry.key in pool.resident()
            assert catalog.alive()
    finally:
        catalog.stop()


def test_force_is_remembered_across_eviction(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=1, max_slots=1)
    other_base = random_adapter(tiny_llama(0), 4, ["v_proj"], seed=3,
                                meta={"base_fingerprint": "f" * 64, "base_name": "other"})
    path = str(save_adapter(other_base, tmp_path / "forced"))
    with pytest.raises(BaseMismatchError):
        engine.add_adapter("forced", path)
    assert engine.add_adapter("forced", path, force=True).force
    for model in ("forced", "ad0", "forced"):                # the second "forced" is a reload after eviction
        c = greedy(engine, model)
        engine.run_until_idle()
        assert c.error is None and len(c.tokens) == 4, model
    assert engine.pool.stats.evictions >= 2


def test_model_ids_are_canonical_in_the_catalog(tmp_path):
    engine, paths = make_engine("llama", tmp_path, n_adapters=1)
    assert engine.add_adapter("inv@01", paths["ad0"]).model_id == "inv@1"
    assert engine.has_model("inv@1") and not engine.has_model("inv@01")
    c = greedy(engine, "inv@001")                             # parsed at the edge: the same version
    engine.run_until_idle()
    assert c.error is None and len(c.tokens) == 4
    assert engine.remove_adapter("inv@1") and not engine.has_model("inv@1")
