"""/metrics and /ready reveal nothing without an operator key; a client that goes away stops its
generation; unknown routes and methods are OpenAI-style errors."""

import time

import httpx
import pytest
from hostile import ACME, ADMIN, BETA, METRICS, MAX_TOKENS, assert_healthy, assert_openai_error, get, post


@pytest.mark.parametrize("key", [None, ACME, BETA, "not-a-key-at-all"])
def test_metrics_need_the_metrics_or_admin_key(env, key):
    r = get(env, "/metrics", key)
    assert_openai_error(r, 401, "invalid_api_key")
    assert "acme" not in r.text and "beta" not in r.text


@pytest.mark.parametrize("key", [METRICS, ADMIN])
def test_metrics_are_served_to_an_operator_key(env, key):
    post(env, "/v1/completions", {"model": "acme-a", "prompt": "x", "max_tokens": 1})
    r = get(env, "/metrics", key)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'loraops_requests_total{model="acme-a",status="200",tenant="acme"}' in r.text


def test_ready_shows_counts_only_to_an_operator(env):
    for key in (None, ACME, BETA):
        assert get(env, "/ready", key).json() == {"status": "ready"}
    detail = get(env, "/ready", METRICS).json()
    assert detail["status"] == "ready" and detail["base"] == "tiny" and detail["adapters"] >= 3


def _series(env, name: str, labels: str) -> float:
    for line in get(env, "/metrics", METRICS).text.splitlines():
        if (line.startswith(f"{name}{{") or line.startswith(f"{name} ")) and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_non_streaming_request_whose_client_leaves_is_cancelled(env):
    closed = 'model="acme-b",status="499",tenant="acme"'
    before = _series(env, "loraops_requests_total", closed)
    tokens_before = _series(env, "loraops_completion_tokens_total", 'model="acme-b",tenant="acme"')
    body = {"model": "acme-b", "prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": 1}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(env["url"] + "/v1/completions", json=body, headers={"Authorization": f"Bearer {ACME}"},
                   timeout=0.3)
    deadline = time.monotonic() + 10
    while _series(env, "loraops_requests_total", closed) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _series(env, "loraops_requests_total", closed) == before + 1
    generated = _series(env, "loraops_completion_tokens_total", 'model="acme-b",tenant="acme"') - tokens_before
    assert generated < MAX_TOKENS                   # stopped early, not generated to the end
    assert _series(env, "loraops_queue_depth", "") == 0 and _series(env, "loraops_batch_size", "") == 0
    assert_healthy(env)


def test_unknown_routes_and_methods_are_openai_errors(env):
    assert_openai_error(get(env, "/v1/nothing", ACME), 404, "not_found")
    assert_openai_error(httpx.put(env["url"] + "/v1/completions", timeout=10), 405)
    assert_openai_error(post(env, "/v1/models", {}), 405)
