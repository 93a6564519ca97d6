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


def _decode(model, tok, constraint, seed, max_steps=120):
    g = torch.Generator().manual_seed(seed)
    ids = tok("Route: my invoice is wrong", return_tensors="pt")["input_ids"]
    out = []
    for _ in range(max_steps):
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        constraint.mask(logits)
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).item()
        if token == tok.eos_token_id:
            break
        constraint.advance(token)
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        if constraint.done:
            break
    return tok.decode(out)


@pytest.mark.parametrize("seed", range(4))
def test_sampled_output_always_validates(tok, seed):
    model = tiny_llama(seed)
    text = _decode(model, tok, RowConstraint(compile_grammar(SCHEMA), tok, VOCAB), seed)
    jsonschema.validate(json.loads(text), SCHEMA)


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
