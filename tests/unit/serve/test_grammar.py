"""Constrained decoding: whatever the model prefers, the masked output parses and validates."""

import json

import jsonschema
import pytest
import torch

from loraops.serve.grammar import (InvalidResponseFormatError, RowConstraint, compile_grammar,
                                   parse_response_format)
from tiny import VOCAB, tiny_llama, tiny_tokenizer

SCHEMA = {"type": "object",
          "properties": {"category": {"enum": ["billing", "technical", "account"]},
                         "priority": {"type": "integer", "minimum": 1, "maximum": 4},
                         "urgent": {"type": "boolean"},
                         "note": {"type": "string", "maxLength": 8}},
          "required": ["category", "priority", "urgent", "note"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _decode(model, tok, constraint, seed, max_steps=120, budget=None, greedy=False):
    """Decode under `constraint` -> (text, tokens drawn); with `budget`, through `choose` as the engine
    does (at most `budget` tokens), else through `mask` alone."""
    g = torch.Generator().manual_seed(seed)
    ids = tok("Route: my invoice is wrong", return_tensors="pt")["input_ids"]

    def pick(logits):
        if greedy:
            return int(torch.argmax(logits))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=g).item()
    out = []
    for step in range(budget or max_steps):
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        if budget is None:
            token = pick(constraint.mask(logits))
        else:
            token = constraint.choose(logits, pick, budget - step)
        out.append(token)
        if token == tok.eos_token_id:
            break
        constraint.advance(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        if constraint.done:
            break
    return tok.decode([t for t in out if t != tok.eos_token_id]), len(out)


@pytest.mark.parametrize("seed", range(4))
def test_sampled_output_always_validates(tok, seed):
    model = tiny_llama(seed)
    text, _ = _decode(model, tok, RowConstraint(compile_grammar(SCHEMA), tok, VOCAB), seed)
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("greedy", [False, True])
def test_a_small_budget_still_closes_the_json(tok, greedy):
    grammar = compile_grammar(SCHEMA)
    need = RowConstraint(grammar, tok, VOCAB).min_tokens
    assert 20 < need < 64          # {"category":"account","priority":1,"urgent":true,"note":""} in tiny tokens
    for seed, budget in enumerate([need, need + 1, need + 3, need + 7, need + 15]):
        model = tiny_llama(seed)
        row = RowConstraint(grammar, tok, VOCAB)
        text, drawn = _decode(model, tok, row, seed, budget=budget, greedy=greedy)
        assert row.done and drawn <= budget
        jsonschema.validate(json.loads(text), SCHEMA)


def test_without_the_budget_the_same_decoding_runs_out_inside_the_json(tok):
    # The test above is not vacuous: masking alone, cut at the same budgets, leaves unfinished JSON.
    grammar = compile_grammar(SCHEMA)
    need = RowConstraint(grammar, tok, VOCAB).min_tokens
    cut = 0
    for seed, budget in enumerate([need, need + 1, need + 3, need + 7, need + 15]):
        row = RowConstraint(grammar, tok, VOCAB)
        _decode(tiny_llama(seed), tok, row, seed, max_steps=budget)
        cut += not row.done
    assert cut >= 3


def test_json_object_closes_in_two_tokens(tok):
    row = RowConstraint(compile_grammar({"type": "object"}), tok, VOCAB)
    assert row.min_tokens <= 2
    text, _ = _decode(tiny_llama(0), tok, row, 0, budget=row.min_tokens)
    assert json.loads(text) == {}


def test_a_budget_below_the_shortest_answer_decodes_freely(tok):
    grammar = compile_grammar(SCHEMA)
    row = RowConstraint(grammar, tok, VOCAB)
    text, _ = _decode(tiny_llama(0), tok, row, 0, budget=row.min_tokens - 1)
    assert not row.done
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_json_object_mode_is_an_object_schema():
    schema = parse_response_format({"type": "json_object"})
    assert schema == {"type": "object"} and compile_grammar(schema).schema == schema


def test_unconstrained_model_does_not_produce_json(tok):
    # Guard against a vacuous test: without the mask, the random model's text is not valid JSON.
    model = tiny_llama(0)
    ids = tok("Route: my invoice is wrong", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False)
    with pytest.raises(json.JSONDecodeError):
        json.loads(tok.decode(out[0, ids.shape[1]:]))


@pytest.mark.parametrize("fmt,match", [
    ({"type": "xml"}, "not one of"),
    ({"type": "json_schema"}, "must be a JSON schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}, "invalid JSON schema"),
    ("json", "must be an object"),
])
def test_bad_response_formats_are_refused(fmt, match):
    with pytest.raises(InvalidResponseFormatError, match=match):
        schema = parse_response_format(fmt)
        compile_grammar(schema)


def test_text_format_means_no_constraint():
    assert parse_response_format({"type": "text"}) is None and parse_response_format(None) is None


def test_bitmask_apply_matches_llguidance_reference():
    import llguidance.torch as llt

    from loraops.serve.grammar import apply_bitmask_
    g = torch.Generator().manual_seed(0)
    for vocab in (384, 1000, 262144):
        words = (vocab + 31) // 32
        bitmask = torch.randint(-2**31, 2**31 - 1, (1, words), dtype=torch.int32, generator=g)
        logits = torch.randn(vocab, generator=g)
        expected = logits.clone().view(1, -1)
        llt.apply_token_bitmask_inplace(expected, bitmask)
        assert torch.equal(apply_bitmask_(logits.clone(), bitmask[0]), expected[0])
