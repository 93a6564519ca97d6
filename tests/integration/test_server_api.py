"""The real server over HTTP: the official openai client, tenancy, limits, bad input, admin, metrics."""

import concurrent.futures as cf
import hashlib
import json
import sys
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import random_adapter  # noqa: E402
from tiny import save_tiny, tiny_llama  # noqa: E402

from loraops.lora import save_adapter  # noqa: E402

ACME, BETA, SLOW, ADMIN = "sk-acme-0123456789", "sk-beta-0123456789", "sk-slow-0123456789", "admin-key-xyz"

TENANTS = f"""
[tenants.acme]
api_keys = ["{ACME}"]
adapters = ["a", "b", "late", "broken", "wrongbase"]
allow_base = false

[tenants.beta]
api_key_hashes = ["sha256:{hashlib.sha256(BETA.encode()).hexdigest()}"]
adapters = ["c"]
allow_base = true

[tenants.slow]
api_keys = ["{SLOW}"]
adapters = ["c"]
allow_base = true
rate_limit = {{ requests_per_minute = 3, tokens_per_minute = 100000, max_concurrent = 4 }}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    base = save_tiny(d / "tiny", "llama")
    model = tiny_llama(0)
    ads = {n: str(save_adapter(random_adapter(model, r, t, seed=i), d / n))
           for i, (n, r, t) in enumerate([("a", 4, ["q_proj", "v_proj"]), ("b", 8, "all-linear"),
                                          ("c", 2, ["o_proj"]), ("late", 3, ["k_proj"])])}
    broken = d / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(Path(ads["a"], "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    wrong = save_adapter(random_adapter(model, 2, ["q_proj"], seed=9,
                                        meta={"base_fingerprint": "f" * 64, "base_name": "other"}), d / "wrongbase")
    (d / "tenants.toml").write_text(TENANTS)
    server = Server(["--base", str(base), "--tenants", str(d / "tenants.toml"), "--admin-key", ADMIN,
                     "--adapter", f"a={ads['a']}", "--adapter", f"b={ads['b']}", "--adapter", f"c={ads['c']}",
                     "--adapter", f"broken={broken}", "--adapter", f"wrongbase={wrong}",
                     "--max-slots", "2", "--max-rank", "8", "--max-tokens-cap", "64", "--max-batch", "8"],
                    d / "server.log")
    yield {"server": server, "url": server.url, "dirs": ads, "broken": str(broken), "wrong": str(wrong)}
    server.stop()


def client(env, key):
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=key, max_retries=0, timeout=30)


def post(env, path, body, key=ACME, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(env["url"] + path, content=raw, headers={**headers, "Content-Type": "application/json"},
                          timeout=30)
    return httpx.post(env["url"] + path, json=body, headers=headers, timeout=30)


def assert_openai_error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code", "param"} and err["message"]
    if code:
        assert err["code"] == code


# ---- the OpenAI client ------------------------------------------------------------------------


def test_models_are_listed_per_tenant(env):
    assert sorted(m.id for m in client(env, ACME).models.list()) == ["a", "b"]
    assert sorted(m.id for m in client(env, BETA).models.list()) == ["c", "tiny"]


def test_completion_with_the_openai_client(env):
    r = client(env, ACME).completions.create(model="a", prompt="Hello, how", max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_equals_non_streaming(env):
    c = client(env, ACME)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Route this ticket"}]
    whole = c.chat.completions.create(model="b", messages=msgs, max_tokens=12, temperature=0)
    chunks = list(c.chat.completions.create(model="b", messages=msgs, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]


def test_sse_stream_ends_with_done(env):
    with httpx.stream("POST", env["url"] + "/v1/completions", headers={"Authorization": f"Bearer {ACME}"},
                      json={"model": "a", "prompt": "Invoice", "max_tokens": 5, "stream": True}, timeout=30) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_seeded_sampling_is_reproducible(env):
    c = client(env, BETA)
    texts = [c.completions.create(model="c", prompt="The quick", max_tokens=10, temperature=1.0, top_p=0.9,
                                  seed=123).choices[0].text for _ in range(2)]
    assert texts[0] == texts[1]


def test_stop_string_is_honoured(env):
    c = client(env, BETA)
    full = c.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0).choices[0].text
    if len(full) < 4:
        pytest.skip("the tiny model produced too little text to cut")
    stop = full[2:4]
    r = c.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[: full.index(stop)]


def test_many_adapters_concurrently_give_their_solo_answers(env):
    c = client(env, ACME)
    jobs = [("a", "Hello"), ("b", "Invoice number"), ("a", "The quick brown"), ("b", "Hello")] * 3

    def run(job):
        return c.completions.create(model=job[0], prompt=job[1], max_tokens=10, temperature=0).choices[0].text
    solo = {job: run(job) for job in set(jobs)}
    with cf.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(run, jobs))
    assert together == [solo[j] for j in jobs]


# ---- tenancy ----------------------------------------------------------------------------------


def test_missing_or_bad_key_is_401(env):
    assert_openai_error(post(env, "/v1/completions", {"model": "a", "prompt": "x"}, key=None), 401, "invalid_api_key")
    assert_openai_error(post(env, "/v1/completions", {"model": "a", "prompt": "x"}, key="sk-wrong-key-123"), 401)
    with pytest.raises(openai.AuthenticationError):
        client(env, "sk-nope-nope-nope").models.list()


def test_another_tenants_adapter_looks_like_a_missing_one(env):
    theirs = post(env, "/v1/completions", {"model": "c", "prompt": "x"}, key=ACME)
    missing = post(env, "/v1/completions", {"model": "zzz", "prompt": "x"}, key=ACME)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {"error": {**missing.json()["error"], "message": missing.json()["error"]["message"]
                                       .replace("zzz", "c")}}
    with pytest.raises(openai.NotFoundError):
        client(env, ACME).chat.completions.create(model="c", messages=[{"role": "user", "content": "x"}])


def test_base_is_refused_to_a_tenant_without_allow_base(env):
    assert_openai_error(post(env, "/v1/completions", {"model": "tiny", "prompt": "x"}), 404, "model_not_found")


def test_requests_per_minute_limit_gives_429_with_retry_after(env):
    body = {"model": "c", "prompt": "x", "max_tokens": 1}
    codes = [post(env, "/v1/completions", body, key=SLOW) for _ in range(4)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]
    assert_openai_error(codes[3], 429, "rate_limit_exceeded")
    assert int(codes[3].headers["Retry-After"]) >= 1
    assert post(env, "/v1/completions", body, key=BETA).status_code == 200   # others are not affected


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"model": "a", "prompt": "x", "max_tokens": 65}, "max_tokens"),
    ("/v1/completions", {"model": "a", "prompt": "hello " * 300, "max_tokens": 8}, "max_tokens"),
    ("/v1/completions", {"model": "a", "prompt": "x", "max_tokens": "8"}, "max_tokens"),
    ("/v1/completions", {"model": "a", "prompt": "x", "temperature": 2.5}, "temperature"),
    ("/v1/completions", {"model": "a", "prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"model": "a", "prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"model": "a", "prompt": 42}, "prompt"),
    ("/v1/completions", {"model": "a", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "a", "prompt": "x", "stop": [1, 2]}, "stop"),
    ("/v1/completions", {"model": "a", "prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"model": 5, "prompt": "x"}, "model"),
    ("/v1/completions", {"model": "../../etc/passwd", "prompt": "x"}, "model"),
    ("/v1/completions", {"model": "a/b", "prompt": "x"}, "model"),
    ("/v1/chat/completions", {"model": "a", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "a", "messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"model": "a", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
])
def test_bad_input_is_a_400_with_an_openai_error_body(env, path, body, param):
    r = post(env, path, body)
    assert_openai_error(r, 400)
    assert r.json()["error"]["param"] == param


def test_prompt_longer_than_the_context_names_the_limit(env):
    r = post(env, "/v1/completions", {"model": "a", "prompt": "hello " * 300, "max_tokens": 8})
    assert_openai_error(r, 400, "context_length_exceeded")
    assert "maximum context length" in r.json()["error"]["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_invalid_json_is_a_400(env, raw):
    assert_openai_error(post(env, "/v1/completions", None, raw=raw), 400)


def test_unknown_route_is_an_openai_style_404(env):
    r = httpx.get(env["url"] + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_corrupt_and_wrong_base_adapters_are_refused_and_the_rest_serves(env):
    assert "broken" not in [m.id for m in client(env, ACME).models.list()]
    log = env["server"].log()
    assert "adapter broken not loaded" in log and "not a valid safetensors" in log
    assert "adapter wrongbase not loaded" in log and "trained on base other" in log
    assert_openai_error(post(env, "/v1/completions", {"model": "broken", "prompt": "x"}), 404)
    assert post(env, "/v1/completions", {"model": "a", "prompt": "x", "max_tokens": 2}).status_code == 200


# ---- admin ------------------------------------------------------------------------------------


def admin(env, method, path, key=ADMIN, **kw):
    return httpx.request(method, env["url"] + path, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kw)


def test_admin_routes_need_the_admin_key(env):
    assert_openai_error(admin(env, "GET", "/admin/adapters", key=ACME), 401)
    assert_openai_error(httpx.get(env["url"] + "/admin/adapters", timeout=10), 401)


def test_admin_load_use_list_and_unload(env):
    r = admin(env, "POST", "/admin/adapters", json={"name": "late", "path": env["dirs"]["late"]})
    assert r.status_code == 201, r.text
    names = [a["name"] for a in admin(env, "GET", "/admin/adapters").json()["adapters"]]
    assert {"a", "b", "c", "late"} <= set(names)
    assert post(env, "/v1/completions", {"model": "late", "prompt": "x", "max_tokens": 2}).status_code == 200
    assert admin(env, "DELETE", "/admin/adapters/late").status_code == 200
    assert_openai_error(post(env, "/v1/completions", {"model": "late", "prompt": "x"}), 404)
    assert_openai_error(admin(env, "DELETE", "/admin/adapters/late"), 404)


def test_admin_load_of_a_bad_adapter_is_a_clear_400(env):
    r = admin(env, "POST", "/admin/adapters", json={"name": "broken", "path": env["broken"]})
    assert_openai_error(r, 400, "adapter_load_failed")
    assert "safetensors" in r.json()["error"]["message"]
    r = admin(env, "POST", "/admin/adapters", json={"name": "wrongbase", "path": env["wrong"]})
    assert_openai_error(r, 400, "adapter_load_failed")
    assert_openai_error(admin(env, "POST", "/admin/adapters", json={"name": "../x", "path": env["broken"]}), 400)
    assert post(env, "/v1/completions", {"model": "b", "prompt": "x", "max_tokens": 2}).status_code == 200


# ---- health and metrics -----------------------------------------------------------------------


def test_health_and_ready(env):
    assert httpx.get(env["url"] + "/health", timeout=10).json() == {"status": "ok"}
    assert httpx.get(env["url"] + "/ready", timeout=10).status_code == 200


def test_metrics_expose_per_adapter_and_engine_series(env):
    post(env, "/v1/completions", {"model": "a", "prompt": "Hello", "max_tokens": 3})
    text = httpx.get(env["url"] + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).text
    assert 'loraops_requests_total{model="a",status="200",tenant="acme"}' in text
    assert 'loraops_completion_tokens_total{model="a",tenant="acme"}' in text
    assert 'loraops_time_to_first_token_seconds_bucket{le="0.005",model="a",tenant="acme"}' in text
    assert "loraops_time_per_output_token_seconds_count" in text
    assert 'loraops_errors_total{code="model_not_found"' in text
    for name in ("loraops_batch_size", "loraops_queue_depth", "loraops_kv_blocks_used", "loraops_slot_hits_total",
                 "loraops_slot_misses_total", "loraops_slot_evictions_total", "loraops_adapter_load_seconds_count",
                 "loraops_resident_adapters", "loraops_spec_draft_tokens_total", "loraops_spec_accepted_tokens_total"):
        assert name in text, name


# ---- constrained decoding ---------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"category": {"enum": ["billing", "technical"]},
                                           "priority": {"type": "integer", "minimum": 1, "maximum": 4}},
          "required": ["category", "priority"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_response_format_gives_valid_json(env, stream):
    import jsonschema

    c = client(env, ACME)
    kw = dict(model="b", messages=[{"role": "user", "content": "Route: invoice wrong"}], max_tokens=64,
              temperature=0.8, seed=3,
              response_format={"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA}})
    if stream:
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                       if ch.choices)
    else:
        r = c.chat.completions.create(**kw)
        assert r.choices[0].finish_reason == "stop"
        text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)


def test_invalid_response_format_is_a_400(env):
    r = post(env, "/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}],
                                           "response_format": {"type": "json_schema",
                                                               "json_schema": {"schema": {"type": "nope"}}}})
    assert_openai_error(r, 400)
    assert r.json()["error"]["param"] == "response_format"


# ---- per-request composition --------------------------------------------------------------------


def test_a_composition_of_own_adapters_is_served(env):
    c = client(env, ACME)

    def text(model):
        return c.completions.create(model=model, prompt="Invoice number", max_tokens=10, temperature=0).choices[0].text
    r = c.completions.create(model="a:0.7+b:0.3", prompt="Invoice number", max_tokens=10, temperature=0)
    assert r.model == "a:0.7+b:0.3" and r.usage.completion_tokens >= 1
    assert text("a:1+b:0") == text("a")                              # weight 0 adds exactly nothing
    assert sorted(m.id for m in c.models.list()) == ["a", "b"]       # compositions are not models
    metrics = httpx.get(env["url"] + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).text
    assert 'loraops_requests_total{model="a+b",status="200",tenant="acme"}' in metrics


def test_a_composition_with_another_tenants_adapter_looks_like_a_missing_one(env):
    theirs = post(env, "/v1/completions", {"model": "a:0.5+c:0.5", "prompt": "x"})
    missing = post(env, "/v1/completions", {"model": "a:0.5+zzz:0.5", "prompt": "x"})
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {"error": {**missing.json()["error"], "message": missing.json()["error"]["message"]
                                       .replace("zzz", "c")}}
    with pytest.raises(openai.NotFoundError):
        client(env, ACME).completions.create(model="b:1+c:1", prompt="x")


@pytest.mark.parametrize("model", ["a:0.5+b", "a:9+b:1", "a:0.5+a:0.5", "a:nan+b:1", "a:1+b:1+a@2:1+b@3:1+c:1"])
def test_a_malformed_composition_is_a_400(env, model):
    r = post(env, "/v1/completions", {"model": model, "prompt": "x"})
    assert_openai_error(r, 400)
    assert r.json()["error"]["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client(env, ACME).completions.create(model=model, prompt="x")
