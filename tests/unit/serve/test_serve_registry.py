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
