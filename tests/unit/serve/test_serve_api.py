"""The HTTP app in-process over a real engine: what is checked before expensive work, and the
grammar cache."""

import pytest
from tiny import tiny_llama, tiny_tokenizer

from loraops.models import BaseInfo, LoadedBase
from loraops.serve.api import AppState, create_app
from loraops.serve.engine import Engine, EngineConfig
from loraops.serve.grammar import GrammarCache, InvalidResponseFormatError
from loraops.serve.tenancy import RateLimit, Tenant, Tenants, digest


def schema(n: int) -> dict:
    return {"type": "object", "properties": {f"k{i}": {"type": "integer"} for i in range(n)}}


def test_a_tenant_over_its_limit_gets_429_before_its_schema_is_compiled(tmp_path):
    from fastapi.testclient import TestClient

    engine = Engine(LoadedBase(tiny_llama(0), tiny_tokenizer(), BaseInfo("tiny", tmp_path, "ab" * 32)),
                    EngineConfig(max_slots=1, max_rank=4))
    slow = Tenant("slow", (digest("sk-slow-12345678"),), frozenset(), allow_base=True,
                  rate_limit=RateLimit(requests_per_minute=1))
    state = AppState(engine, Tenants([slow]))
    engine.start()
    try:
        with TestClient(create_app(state)) as http:
            def ask(n):
                return http.post("/v1/completions", headers={"Authorization": "Bearer sk-slow-12345678"}, json={
                    "model": "tiny", "prompt": "x", "max_tokens": 2, "response_format": {
                        "type": "json_schema", "json_schema": {"name": "s", "schema": schema(n)}}})
            assert ask(1).status_code == 200 and len(state.grammars) == 1
            r = ask(2)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
            assert len(state.grammars) == 1                  # the second schema was never compiled
    finally:
        engine.stop()


def test_grammars_are_compiled_once_per_schema_and_the_cache_is_bounded():
    cache = GrammarCache(maxsize=2)
    first = cache.compile(schema(3))
    assert cache.compile({"properties": schema(3)["properties"], "type": "object"}) is first   # key order: same
    cache.compile(schema(4))
    cache.compile(schema(5))
    assert len(cache) == 2 and cache.compile(schema(5)) is not first
    with pytest.raises(InvalidResponseFormatError):
        cache.compile({"type": "nope"})
    with pytest.raises(InvalidResponseFormatError):        # a refusal is remembered, and raised again
        cache.compile({"type": "nope"})


def test_schemas_past_the_size_bounds_are_refused_before_compiling():
    from loraops.serve.grammar import MAX_SCHEMA_NODES, check_schema_size

    check_schema_size(schema(100))
    with pytest.raises(InvalidResponseFormatError, match="more than"):
        check_schema_size(schema(MAX_SCHEMA_NODES))
    with pytest.raises(InvalidResponseFormatError, match="bytes"):
        check_schema_size({"enum": ["x" * 40_000]})
