"""Request parsing: defaults, aliases, and every malformed field as a BadRequestError naming it."""

import pytest

from loraops.serve.errors import BadRequestError
from loraops.serve.protocol import parse_chat, parse_completion, parse_json


def test_completion_defaults_and_fields():
    r = parse_completion({"model": "m", "prompt": ["hi"], "max_tokens": 5, "temperature": 0, "stop": "x",
                          "seed": 3, "top_k": 4, "stream": True, "stream_options": {"include_usage": True}})
    assert (r.prompt, r.params.max_tokens, r.params.greedy, r.params.stop, r.params.seed, r.params.top_k) == \
        ("hi", 5, True, ("x",), 3, 4)
    assert r.stream and r.include_usage and r.schema is None and not r.params.ignore_eos
    assert parse_completion({"model": "m", "prompt": "x", "ignore_eos": True}).params.ignore_eos


def test_chat_accepts_max_completion_tokens_text_parts_and_developer_role():
    r = parse_chat({"model": "m", "max_completion_tokens": 7, "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert r.params.max_tokens == 7
    assert r.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"})


def test_json_object_response_format_becomes_an_object_schema():
    r = parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "json_object"}})
    assert r.schema == {"type": "object"}


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x"}, "model"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"model": "m", "prompt": "x", "top_k": -1}, "top_k"),
    ({"model": "m", "prompt": "x", "seed": 1.5}, "seed"),
    ({"model": "m", "prompt": "x", "stop": ["a"] * 5}, "stop"),
    ({"model": "m", "prompt": [True]}, "prompt"),
    ({"model": "m", "prompt": "x", "stream_options": 3}, "stream_options"),
    ({"model": "m", "prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
    ({"model": "m", "prompt": "x", "response_format": {"type": "xml"}}, "response_format"),
])
def test_bad_completion_fields_name_their_param(body, param):
    with pytest.raises(BadRequestError) as e:
        parse_completion(body)
    assert e.value.param == param


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b"\x80"])
def test_non_object_json_is_refused(raw):
    with pytest.raises(BadRequestError):
        parse_json(raw)


def test_completion_logprobs_echo_and_choices():
    r = parse_completion({"model": "m", "prompt": "x", "echo": True, "max_tokens": 0, "logprobs": 3, "n": 2,
                          "best_of": 3, "seed": 1, "logit_bias": {"7": -100, "12": 2.5}, "presence_penalty": 0.5,
                          "frequency_penalty": -1, "repetition_penalty": 1.2})
    p = r.params
    assert (r.n, r.best_of, r.echo, r.logprobs) == (2, 3, True, 3)
    assert (p.max_tokens, p.logprobs, p.prompt_logprobs, p.logit_bias) == (0, 3, 3, ((7, -100.0), (12, 2.5)))
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -1.0, 1.2)
    # best_of > n ranks by log-prob: the engine computes the tokens' log-probs even if not asked for
    r = parse_completion({"model": "m", "prompt": "x", "n": 1, "best_of": 2})
    assert r.logprobs is None and r.params.logprobs == 0 and r.params.prompt_logprobs is None


def test_chat_logprobs_tools_and_messages():
    r = parse_chat({"model": "m", "logprobs": True, "top_logprobs": 4, "n": 3, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "ok"}]}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"})
    assert (r.logprobs, r.params.logprobs, r.n, r.tools.choice) == (4, 4, 3, "required")
    assert r.messages[1] == {"role": "assistant", "content": None,
                             "tool_calls": [{"id": "c1", "name": "f", "arguments": "{}"}]}
    assert r.messages[2] == {"role": "tool", "content": "ok", "tool_call_id": "c1"}
    assert parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True}).logprobs == 0


@pytest.mark.parametrize("body,param", [
    ({"max_tokens": 0}, "max_tokens"),                          # 0 only with echo
    ({"n": 0}, "n"), ({"n": 9}, "n"), ({"n": 3, "best_of": 2}, "best_of"), ({"best_of": 9}, "best_of"),
    ({"best_of": 2, "stream": True}, "best_of"),
    ({"logprobs": 21}, "logprobs"), ({"logprobs": -1}, "logprobs"), ({"logprobs": True}, "logprobs"),
    ({"echo": "yes"}, "echo"),
    ({"logit_bias": [1]}, "logit_bias"), ({"logit_bias": {"a": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"), ({"logit_bias": {"5": "x"}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"suffix": "!"}, "suffix"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"), ({"functions": [{"name": "f"}]}, "functions"),
])
def test_bad_new_completion_fields_name_their_param(body, param):
    with pytest.raises(BadRequestError) as e:
        parse_completion({"model": "m", "prompt": "x", **body})
    assert e.value.param == param


@pytest.mark.parametrize("body,param", [
    ({"top_logprobs": 3}, "top_logprobs"), ({"logprobs": 1}, "logprobs"), ({"top_logprobs": 21, "logprobs": True},
                                                                         "top_logprobs"),
    ({"echo": True}, "echo"), ({"best_of": 2}, "best_of"), ({"function_call": "auto"}, "function_call"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}]}, "messages[0].tool_calls[0]"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
])
def test_bad_new_chat_fields_name_their_param(body, param):
    with pytest.raises(BadRequestError) as e:
        parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], **body})
    assert e.value.param == param
