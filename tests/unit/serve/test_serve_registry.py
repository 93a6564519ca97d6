"""Hot reload from the registry: production versions are served; a promotion swaps new requests
to the new version while running ones finish on theirs."""

import pytest
from lora_factory import random_adapter
from test_serve_engine import Collector
from tiny import tiny_llama, tiny_tokenizer

from loraops.lora import save_adapter
from loraops.models import BaseInfo, LoadedBase
from loraops.serve.engine import Engine, EngineConfig
from loraops.serve.sampling import SamplingParams
from loraops.serve.server import RegistryWatcher
from loraops.serve.tenancy import digest

pytest.importorskip("sqlalchemy")
FP = "ab" * 32


def run(engine, model, prompt=(5, 6, 7, 8), steps=None):
    c = Collector()
    seq = engine.submit("t", model, list(prompt), SamplingParams(10, temperature=0.0), c)
    if steps is None:
        engine.run_until_idle()
    else:
        for _ in range(steps):
            engine.step()
    return c, seq


def test_promotions_and_rollbacks_are_picked_up(tmp_path):
    model = tiny_llama(0)
    meta = {"base_fingerprint": FP, "base_name": "tiny"}
    v1 = save_adapter(random_adapter(model, 4, ["q_proj", "v_proj"], seed=1, meta=meta), tmp_path / "v1")
    v2 = save_adapter(random_adapter(model, 8, "all-linear", seed=2, meta=meta), tmp_path / "v2")
    engine = Engine(LoadedBase(model, tiny_tokenizer(), BaseInfo("tiny", tmp_path, FP)),
                    EngineConfig(max_slots=2, max_rank=8))
    watcher = RegistryWatcher(engine, poll_s=3600)
    reg = watcher.registry
    reg.register_base(FP, "tiny")
    reg.push(v1, "inv", tenant="acme")
    reg.push(v2, "inv", tenant="acme")
    watcher.sync()
    assert not engine.has_model("inv")                        # nothing in production yet
    reg.promote("inv", 1)
    watcher.sync()
    first, _ = run(engine, "inv")
    running, _ = run(engine, "inv", steps=2)                  # admitted on version 1
    reg.promote("inv", 2)
    watcher.sync()
    engine.run_until_idle()
    second, _ = run(engine, "inv")
    assert running.tokens == first.tokens != second.tokens
    reg.rollback("inv")
    watcher.sync()
    assert run(engine, "inv")[0].tokens == first.tokens


def versions_engine(tmp_path, max_pinned=64):
    """Versions 1 and 2 of "inv" pushed, version 2 in production; also v1 under the plain id "ref1"."""
    model = tiny_llama(0)
    meta = {"base_fingerprint": FP, "base_name": "tiny"}
    v1 = save_adapter(random_adapter(model, 4, ["q_proj", "v_proj"], seed=1, meta=meta), tmp_path / "v1")
    v2 = save_adapter(random_adapter(model, 8, "all-linear", seed=2, meta=meta), tmp_path / "v2")
    engine = Engine(LoadedBase(model, tiny_tokenizer(), BaseInfo("tiny", tmp_path, FP)),
                    EngineConfig(max_slots=2, max_rank=8))
    watcher = RegistryWatcher(engine, poll_s=3600, max_pinned=max_pinned)
    reg = watcher.registry
    reg.register_base(FP, "tiny")
    reg.push(v1, "inv", tenant="acme")
    reg.push(v2, "inv", tenant="acme")
    reg.push(v1, "other", tenant="beta")
    reg.promote("inv", 2)
    watcher.sync()
    engine.add_adapter("ref1", str(v1))
    return engine, watcher


def test_name_at_version_serves_that_exact_registry_version(tmp_path):
    engine, watcher = versions_engine(tmp_path)
    assert not engine.has_model("inv@1")
    assert watcher.pin("inv@1") and watcher.pin("inv@2") and not watcher.pin("inv@9")
    assert not watcher.pin("nothing@1") and not engine.has_model("inv@9")
    prod, v1, v2, ref1 = (run(engine, m)[0].tokens for m in ("inv", "inv@1", "inv@2", "ref1"))
    assert prod == v2 != v1 == ref1


def test_pinned_versions_beyond_the_cap_are_evicted_least_recently_used_first(tmp_path):
    engine, watcher = versions_engine(tmp_path, max_pinned=2)
    assert watcher.pin("inv@1") and watcher.pin("inv@2")
    assert watcher.pin("inv@1")                                # used again: inv@2 is now the oldest
    assert watcher.pin("other@1")
    assert engine.has_model("inv@1") and engine.has_model("other@1") and not engine.has_model("inv@2")
    assert engine.has_model("inv")                             # production entries are never evicted


def test_http_routes_name_at_version_per_tenant(tmp_path):
    from fastapi.testclient import TestClient

    from loraops.serve.api import AppState, create_app
    from loraops.serve.tenancy import Tenant, Tenants

    engine, watcher = versions_engine(tmp_path)
    acme = Tenant("acme", (digest("sk-acme-12345678"),), frozenset({"inv", "ref1"}))
    beta = Tenant("beta", (digest("sk-beta-12345678"),), frozenset({"other"}))
    app = create_app(AppState(engine, Tenants([acme, beta]), pin_version=watcher.pin))
    engine.start()
    try:
        with TestClient(app) as http:
            def complete(model, key="sk-acme-12345678"):
                return http.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": model, "prompt": [5, 6, 7, 8], "max_tokens": 10, "temperature": 0})
            texts = {m: complete(m).json()["choices"][0]["text"] for m in ("inv", "inv@1", "ref1")}
            assert texts["inv"] != texts["inv@1"] == texts["ref1"]
            missing = complete("inv@9")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
            theirs, nobody = complete("other@1"), complete("nobody@1")
            assert theirs.status_code == nobody.status_code == 404
            assert theirs.json()["error"]["message"].replace("other", "nobody") == nobody.json()["error"]["message"]
            assert not engine.has_model("other@1")              # another tenant's version is never loaded
            assert complete("other@1", key="sk-beta-12345678").status_code == 200
    finally:
        engine.stop()


def test_a_production_version_that_cannot_be_served_keeps_the_previous_one(tmp_path, caplog):
    """inv@3 (rank 16, above this server's max rank) is promoted: the watcher logs it once, keeps
    serving inv@2, and still syncs the other adapters; versions given as "inv@02" are the same pin."""
    engine, watcher = versions_engine(tmp_path)
    big = save_adapter(random_adapter(tiny_llama(0), 16, ["q_proj"], seed=3,
                                      meta={"base_fingerprint": FP, "base_name": "tiny"}), tmp_path / "v3")
    reg = watcher.registry
    reg.push(big, "inv", tenant="acme")
    reg.promote("inv", 3)
    reg.promote("other", 1)
    before = run(engine, "inv")[0].tokens
    watcher.sync()
    watcher.sync()                                             # versions are immutable: not retried
    assert sum("inv@3 not served" in r.message for r in caplog.records) == 1
    assert "still serving the previous version" in caplog.text
    assert watcher.pin("inv@2")
    assert run(engine, "inv")[0].tokens == before == run(engine, "inv@02")[0].tokens
    assert engine.has_model("other")
