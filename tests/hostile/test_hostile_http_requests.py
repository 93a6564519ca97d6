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


# Fields this server does not implement on a route: refused by name unless neutral.
UNSUPPORTED = [(COMPLETE, "suffix", "!"), (CHAT, "suffix", "!"), (COMPLETE, "functions", [{"name": "f"}]),
               (CHAT, "function_call", "auto"), (COMPLETE, "tools", [{"type": "function", "function": {"name": "f"}}]),
               (COMPLETE, "tool_choice", "auto"), (COMPLETE, "top_logprobs", 3), (CHAT, "echo", True),
               (CHAT, "best_of", 2)]


@pytest.mark.parametrize("route,field,value", UNSUPPORTED, ids=[f"{r[4:]}-{f}" for r, f, _ in UNSUPPORTED])
def test_a_field_that_would_change_the_output_is_refused_by_name(env, route, field, value):
    body = {"model": "acme-a", "prompt": "x"} if route == COMPLETE else {"model": "acme-a", "messages": USER}
    err = assert_openai_error(post(env, route, {**body, field: value}), 400, "invalid_value", field)
    assert field in err["message"]


def test_neutral_values_of_unsupported_fields_are_accepted(env):
    body = {"model": "acme-a", "prompt": "x", "max_tokens": 2, "presence_penalty": 0, "frequency_penalty": 0.0,
            "logit_bias": {}, "best_of": 1, "n": 1, "echo": False, "suffix": None, "logprobs": None,
            "tools": [], "tool_choice": "none"}
    assert post(env, COMPLETE, body).status_code == 200


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
# Bad values of the parameters the server implements: (route, extra fields, param). Each is one 400 naming it.
BAD_VALUES = {
    "n-zero": (COMPLETE, {"n": 0}, "n"),
    "n-over-the-cap": (CHAT, {"n": 10**6}, "n"),
    "best-of-below-n": (COMPLETE, {"n": 3, "best_of": 2}, "best_of"),
    "best-of-streamed": (COMPLETE, {"best_of": 2, "stream": True}, "best_of"),
    "max-tokens-0-without-echo": (COMPLETE, {"max_tokens": 0}, "max_tokens"),
    "logprobs-21": (COMPLETE, {"logprobs": 21}, "logprobs"),
    "logprobs-bool-on-completions": (COMPLETE, {"logprobs": True}, "logprobs"),
    "logprobs-int-on-chat": (CHAT, {"logprobs": 3}, "logprobs"),
    "top-logprobs-without-logprobs": (CHAT, {"top_logprobs": 3}, "top_logprobs"),
    "top-logprobs-99": (CHAT, {"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    "echo-string": (COMPLETE, {"echo": "yes"}, "echo"),
    "logit-bias-list": (COMPLETE, {"logit_bias": [1, 2]}, "logit_bias"),
    "logit-bias-key-not-an-id": (COMPLETE, {"logit_bias": {"abc": 1}}, "logit_bias"),
    "logit-bias-key-negative": (CHAT, {"logit_bias": {"-5": 1}}, "logit_bias"),
    "logit-bias-id-past-the-vocab": (COMPLETE, {"logit_bias": {"99999": 1}}, "logit_bias"),
    "logit-bias-101": (COMPLETE, {"logit_bias": {"5": 101}}, "logit_bias"),
    "logit-bias-2000-entries": (COMPLETE, {"logit_bias": {str(i): 1 for i in range(2000)}}, "logit_bias"),
    "presence-penalty-3": (COMPLETE, {"presence_penalty": 3}, "presence_penalty"),
    "frequency-penalty-string": (CHAT, {"frequency_penalty": "1"}, "frequency_penalty"),
    "repetition-penalty-0": (COMPLETE, {"repetition_penalty": 0}, "repetition_penalty"),
    "tools-not-a-list": (CHAT, {"tools": {"a": 1}}, "tools"),
    "tools-custom-kind": (CHAT, {"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
    "tool-name-with-spaces": (CHAT, {"tools": [{"type": "function", "function": {"name": "a b"}}]},
                              "tools[0].function.name"),
    "tool-parameters-not-an-object": (CHAT, {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "array"}}}]}, "tools[0].function.parameters"),
    "tool-parameters-invalid-schema": (CHAT, {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "required": 5}}}]}, "tools[0].function.parameters"),
    "tool-parameters-5000-properties": (CHAT, {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {f"p{i}": {"type": "string"}
                                                                      for i in range(5000)}}}}]},
        "tools[0].function.parameters"),
    "tools-200": (CHAT, {"tools": [TOOL] * 200}, "tools"),
    "tools-same-name-twice": (CHAT, {"tools": [TOOL, TOOL]}, "tools"),
    "tool-choice-unknown-function": (CHAT, {"tools": [TOOL], "tool_choice": {"type": "function",
                                                                             "function": {"name": "g"}}}, "tool_choice"),
    "tool-choice-without-tools": (CHAT, {"tool_choice": "required"}, "tool_choice"),
    "tool-choice-allowed-tools": (CHAT, {"tools": [TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    "parallel-tool-calls-string": (CHAT, {"tools": [TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    "tools-with-response-format": (CHAT, {"tools": [TOOL], "tool_choice": "required",
                                          "response_format": {"type": "json_object"}}, "response_format"),
    "tool-message-without-id": (CHAT, {"messages": [*USER, {"role": "tool", "content": "x"}]},
                                "messages[1].tool_call_id"),
    "assistant-tool-calls-malformed": (CHAT, {"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}]}, "messages[1].tool_calls[0]"),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_a_bad_value_of_a_new_parameter_is_one_clean_400(env, case):
    route, extra, param = BAD_VALUES[case]
    body = {"model": "acme-a", "prompt": "x"} if route == COMPLETE else {"model": "acme-a", "messages": USER}
    with bystander(env):
        assert_openai_error(post(env, route, {**body, **extra}), 400, "invalid_value", param)
    assert_healthy(env)


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
