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
