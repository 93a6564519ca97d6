"""Hostile request bodies against the real server: each is one clean 4xx with an OpenAI error body,
another tenant's request in flight meanwhile is unaffected, and the server stays healthy."""

import json

import httpx
import pytest
from hostile import (ACME, BETA, MAX_BODY, MAX_PROMPT_CHARS, assert_healthy, assert_openai_error, bystander,
                     get, post)

CHAT = "/v1/chat/completions"
COMPLETE = "/v1/completions"
USER = [{"role": "user", "content": "Hello"}]


def raw(prefix: str, value: str, route: str = COMPLETE) -> tuple[str, bytes]:
    """A body whose `value` is spliced in as raw JSON text (NaN, 5,000 digits, escapes)."""
    head = '{"model": "acme-a", ' + ('"messages": [{"role": "user", "content": "hi"}], ' if route == CHAT
                                     else '"prompt": "hi", ')
    return route, (head + f'"{prefix}": {value}}}').encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (route, raw body, status, code, param): every one of these was a 500 or a silent acceptance once.
RAW_CASES = {
    "nesting-5000-completions": (*raw("x", nested(5000)), 400, "invalid_value", None),
    "nesting-5000-chat": (*raw("x", nested(5000), CHAT), 400, "invalid_value", None),
    "nesting-100": (*raw("x", nested(100)), 400, "invalid_value", None),
    "int-5000-digits": (*raw("max_tokens", "9" * 5000), 400, "invalid_value", None),
    "int-4000-digits": (*raw("max_tokens", "9" * 4000), 400, "invalid_value", "max_tokens"),
    "seed-4000-digits": (*raw("seed", "-" + "9" * 4000), 400, "invalid_value", "seed"),
    "temperature-nan": (*raw("temperature", "NaN"), 400, "invalid_value", None),
    "top-p-nan": (*raw("top_p", "NaN"), 400, "invalid_value", None),
    "temperature-infinity": (*raw("temperature", "Infinity", CHAT), 400, "invalid_value", None),
    "top-p-1e309": (*raw("top_p", "1e309"), 400, "invalid_value", "top_p"),
    "temperature-1e-300": (*raw("temperature", "1e-300"), 400, "invalid_value", "temperature"),
    "top-p-5e-324": (*raw("top_p", "5e-324"), 400, "invalid_value", "top_p"),
    "prompt-lone-surrogate": (COMPLETE, b'{"model": "acme-a", "prompt": "ab\\ud800cd"}', 400, "invalid_value", "prompt"),
    "message-lone-surrogate": (CHAT, b'{"model": "acme-a", "messages": [{"role": "user", "content": "\\udfff"}]}',
                               400, "invalid_value", "messages[0].content"),
    "stop-lone-surrogate": (*raw("stop", '["\\ud83d"]'), 400, "invalid_value", "stop[0]"),
    "key-lone-surrogate": (*raw("\\ud800", "1"), 400, "invalid_value", None),
    "model-lone-surrogate": (COMPLETE, b'{"model": "a\\ud800", "prompt": "x"}', 400, "invalid_value", "model"),
    "not-utf8": (COMPLETE, b'{"model": "acme-a", "prompt": "\xff\xfe"}', 400, "invalid_value", None),
    "top-level-array": (COMPLETE, b"[" * 3 + b"]" * 3, 400, "invalid_value", None),
}


@pytest.mark.parametrize("case", RAW_CASES, ids=list(RAW_CASES))
def test_a_hostile_body_is_one_clean_400(env, case):
    route, body, status, code, param = RAW_CASES[case]
    with bystander(env):
        assert_openai_error(post(env, route, raw=body), status, code, param)
    assert_healthy(env)


def schema_nested(depth: int) -> dict:
    schema = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


# (route, body, status, code, param)
CASES = {
    "schema-nested-300": (CHAT, {"model": "acme-a", "messages": USER,
                                 "response_format": json_schema(schema_nested(300))}, 400, "invalid_value", None),
    "schema-5000-properties": (CHAT, {"model": "acme-a", "messages": USER, "response_format": json_schema(
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}})},
        400, "invalid_value", "response_format"),
    "schema-1500-empty-properties": (COMPLETE, {"model": "acme-a", "prompt": "x", "response_format": json_schema(
        {"type": "object", "properties": {f"p{i}": {} for i in range(1500)}})}, 400, "invalid_value",
        "response_format"),
    "prompt-over-the-char-limit": (COMPLETE, {"model": "acme-a", "prompt": "a" * (MAX_PROMPT_CHARS + 1)},
                                   400, "invalid_value", "prompt"),
    "messages-over-the-char-limit": (CHAT, {"model": "acme-a", "messages": [
        {"role": "user", "content": "a" * (MAX_PROMPT_CHARS // 2)}] * 3}, 400, "invalid_value", "messages"),
    "token-ids-over-the-limit": (COMPLETE, {"model": "acme-a", "prompt": [5] * (MAX_PROMPT_CHARS + 1)},
                                 400, "invalid_value", "prompt"),
    "stop-too-long": (COMPLETE, {"model": "acme-a", "prompt": "x", "stop": "s" * 257}, 400, "invalid_value", "stop"),
    "composition-weight-nan": (COMPLETE, {"model": "acme-a:nan+acme-b:1", "prompt": "x"}, 400, "invalid_value",
                               "model"),
    "composition-weight-inf": (COMPLETE, {"model": "acme-a:inf+acme-b:1", "prompt": "x"}, 400, "invalid_value",
                               "model"),
    "composition-weight-1e309": (COMPLETE, {"model": "acme-a:1e309+acme-b:1", "prompt": "x"}, 400,
                                 "invalid_value", "model"),
    "stream-options-not-bool": (COMPLETE, {"model": "acme-a", "prompt": "x", "stream": True,
                                           "stream_options": {"include_usage": "yes"}}, 400, "invalid_value",
                                "stream_options.include_usage"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_hostile_request_is_one_clean_4xx(env, case):
    route, body, status, code, param = CASES[case]
    with bystander(env):
        assert_openai_error(post(env, route, body), status, code, param)
    assert_healthy(env)


UNSUPPORTED = [("logit_bias", {"5": 10}), ("presence_penalty", 0.5), ("frequency_penalty", -1),
               ("best_of", 2), ("suffix", "!"), ("echo", True), ("logprobs", 2), ("n", 2), ("top_logprobs", 3),
               ("tools", [{"type": "function", "function": {"name": "f"}}])]


@pytest.mark.parametrize("field,value", UNSUPPORTED, ids=[f for f, _ in UNSUPPORTED])
def test_a_field_that_would_change_the_output_is_refused_by_name(env, field, value):
    for route, body in ((COMPLETE, {"model": "acme-a", "prompt": "x"}), (CHAT, {"model": "acme-a", "messages": USER})):
        err = assert_openai_error(post(env, route, {**body, field: value}), 400, "invalid_value", field)
        assert field in err["message"]


def test_neutral_values_of_unsupported_fields_are_accepted(env):
    body = {"model": "acme-a", "prompt": "x", "max_tokens": 2, "presence_penalty": 0, "frequency_penalty": 0.0,
            "logit_bias": {}, "best_of": 1, "n": 1, "echo": False, "suffix": None, "logprobs": None}
    assert post(env, COMPLETE, body).status_code == 200


def test_a_body_over_the_limit_is_413_unread(env):
    body = json.dumps({"model": "acme-a", "prompt": "x" * MAX_BODY}).encode()
    with bystander(env):
        assert_openai_error(post(env, COMPLETE, raw=body), 413, "request_too_large")

        def chunks():                                      # no Content-Length: counted while reading
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]
        r = httpx.post(env["url"] + COMPLETE, content=chunks(), timeout=60,
                       headers={"Authorization": f"Bearer {ACME}", "Content-Type": "application/json"})
        assert_openai_error(r, 413, "request_too_large")
    assert_healthy(env)


def test_an_over_limit_tenant_gets_429_even_with_a_costly_schema(env):
    # That the schema is then never compiled is checked in-process: tests/unit/serve/test_serve_api.py.
    from hostile import SLOW
    body = {"model": "beta-c", "prompt": "x", "max_tokens": 1}
    codes = [post(env, COMPLETE, body, key=SLOW).status_code for _ in range(2)]
    assert codes == [200, 200]
    big = {**body, "response_format": json_schema({"type": "object", "properties": {
        f"q{i}": {"type": "integer"} for i in range(400)}})}
    err = assert_openai_error(post(env, COMPLETE, big, key=SLOW), 429, "rate_limit_exceeded")
    assert "requests per minute" in err["message"]
    assert post(env, COMPLETE, body, key=BETA).status_code == 200
