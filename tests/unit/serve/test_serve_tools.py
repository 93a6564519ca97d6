"""Tool calling: the request's tools, the prompt they make, the grammars calls decode under (their
arguments parse and validate), and the parser that turns a reply back into calls."""

import json
import random

import jsonschema
import pytest
import torch
from tiny import tiny_tokenizer

from loraops.serve.errors import BadRequestError
from loraops.serve.grammar import RowConstraint, compile_lark
from loraops.serve.tools import ToolCallParser, call_text, parse_tools, render_messages, tool_grammar

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def spec(choice=None, parallel=None):
    return parse_tools({"tools": TOOLS, "tool_choice": choice, "parallel_tool_calls": parallel})


def decode(grammar_text: str, seed: int, prefix: str = "", max_tokens: int = 120) -> str:
    """Sample from random logits under the grammar (the model's choices are random; the grammar's
    guarantees must hold whatever they are)."""
    tok = tiny_tokenizer()
    row = RowConstraint(compile_lark(grammar_text), tok, len(tok))
    ids = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    for t in ids:
        row.advance(t)
    g = torch.Generator().manual_seed(seed)
    for _ in range(max_tokens):
        if row.done:
            break
        logits = row.mask(torch.randn(len(tok), generator=g))
        if tok.eos_token_id is not None and torch.isfinite(logits[tok.eos_token_id]):
            logits[tok.eos_token_id] += 3.0                      # end when the grammar allows it
        t = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
        if t == tok.eos_token_id:
            break
        ids.append(t)
        row.advance(t)
    return tok.decode(ids)


def parse(text: str, chunks: int | None = None, seed: int = 0) -> ToolCallParser:
    p = ToolCallParser(list(SCHEMAS))
    if chunks is None:
        p.feed(text)
    else:                                                        # the same text in random pieces
        rng, at = random.Random(seed), 0
        while at < len(text):
            n = rng.randint(1, chunks)
            p.feed(text[at:at + n])
            at += n
    p.finish()
    return p


@pytest.mark.parametrize("choice,parallel", [("required", False), ({"type": "function",
                                                                     "function": {"name": "get_time"}}, True)])
def test_required_and_named_calls_always_parse_and_validate(choice, parallel):
    s = spec(choice, parallel)
    for seed in range(3):
        text = decode(tool_grammar(s), seed)
        p = parse(text)
        assert p.calls and all(c.complete for c in p.calls) and not p.content.strip(), text
        for c in p.calls:
            jsonschema.validate(json.loads(c.arguments), SCHEMAS[c.name])
            assert s.choice != "function" or c.name == "get_time"
        assert len(p.calls) == 1 or parallel


def test_auto_is_free_text_until_the_trigger_then_a_valid_call():
    grammar = tool_grammar(spec("auto", parallel=False))
    text = decode(grammar, seed=1, prefix="Let me look. <tool_call>")
    p = parse(text)
    assert p.content.startswith("Let me look. ") and len(p.calls) == 1 and p.calls[0].complete, text
    jsonschema.validate(json.loads(p.calls[0].arguments), SCHEMAS[p.calls[0].name])
    free = decode(grammar, seed=2, max_tokens=30)                # without the trigger: free text, no call
    assert free and not parse(free).calls and parse(free).content == free


def test_the_parser_splits_content_and_calls_however_the_text_is_chunked():
    args = '{"zone": "}</tool_call>"}'                           # a string holding the end marker
    text = ("Sure. " + call_text("get_time", args) + "\n" + call_text("get_weather", '{"city": "Paris", "days": 2}')
            + " done <tool_c")
    for chunks in (None, 1, 3, 7):
        p = parse(text, chunks, seed=chunks or 0)
        assert [(c.name, c.arguments, c.complete) for c in p.calls] == [
            ("get_time", args, True), ("get_weather", '{"city": "Paris", "days": 2}', True)]
        assert p.content == "Sure.  done <tool_c"


def test_a_call_cut_off_is_incomplete_and_unknown_names_are_content():
    p = parse('<tool_call>{"name": "get_time", "arguments": {"zone": "U')
    assert len(p.calls) == 1 and not p.calls[0].complete and p.calls[0].arguments == '{"zone": "U'
    p = parse('<tool_call>{"name": "other", "arguments": {}}</tool_call>')
    assert not p.calls and p.content.startswith("<tool_call>")


def test_streamed_deltas_name_the_call_first_then_its_arguments():
    p, deltas = ToolCallParser(list(SCHEMAS)), []
    for ch in "Hi " + call_text("get_time", '{"zone": "UTC"}'):
        deltas += p.feed(ch)
    deltas += p.finish()
    kinds = [d[0] for d in deltas]
    assert kinds[0] == "content" and ("call", 0, "get_time") in deltas
    assert kinds.index("call") < kinds.index("arguments")
    assert "".join(d[2] for d in deltas if d[0] == "arguments") == '{"zone": "UTC"}'


def test_tool_results_go_through_the_template_as_user_turns():
    msgs = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'},
                {"id": "c2", "name": "get_time", "arguments": '{"zone": "CET"}'}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            {"role": "tool", "content": "12:00", "tool_call_id": "c2"})
    out = render_messages(msgs, spec())
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert "get_weather" in out[0]["content"] and out[0]["content"].endswith("Be brief.")
    assert out[2]["content"] == (call_text("get_weather", '{"city": "Paris", "days": 1}') + "\n"
                                 + call_text("get_time", '{"zone": "CET"}'))
    assert out[3]["content"] == ('<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>\n'
                                 '<tool_response>{"name": "get_time", "content": "12:00"}</tool_response>')
    text = tiny_tokenizer().apply_chat_template(out, tokenize=False, add_generation_prompt=True)
    assert "<tool_response>" in text and text.endswith("<start_of_turn>model\n")


@pytest.mark.parametrize("body,param", [
    ({"tools": "x"}, "tools"),
    ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "properties": 3}}}]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}] * 129}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_tools_are_refused_naming_the_field(body, param):
    with pytest.raises(BadRequestError) as e:
        parse_tools(body)
    assert e.value.param == param


def test_no_tools_and_defaults():
    assert parse_tools({}) is None and parse_tools({"tools": [], "tool_choice": "none"}) is None
    s = parse_tools({"tools": [{"type": "function", "function": {"name": "f"}}]})
    assert (s.choice, s.parallel, s.functions[0].parameters) == ("auto", True, {"type": "object", "properties": {}})
    assert tool_grammar(parse_tools({"tools": TOOLS, "tool_choice": "none"})) is None
