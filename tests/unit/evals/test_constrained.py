"""Constrained decoding in the eval's generate: every row is JSON that validates against the schema,
where a random model left free almost never writes JSON at all."""

import json

import pytest
import torch

from loraops.demo.tasks import invoice_example, invoice_json_schema
from loraops.errors import ConfigError
from loraops.evals.constrained import compile_schema
from loraops.evals.generate import generate
from loraops.evals.metrics import parse_json_object
from tiny import tiny_llama, tiny_tokenizer

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

# Bounded everywhere (no free numbers), so a random model's constrained JSON always ends in budget.
SCHEMA = {"type": "object",
          "properties": {"vendor": {"type": "string", "maxLength": 8}, "currency": {"enum": ["EUR", "USD"]},
                         "paid": {"type": "boolean"},
                         "due": {"anyOf": [{"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                                           {"type": "null"}]}},
          "required": ["vendor", "currency", "paid", "due"], "additionalProperties": False}
PROMPTS = ["Invoice INV-7 from Acme GmbH, total 1,234.56 EUR.\nJSON:", "Hello, how", "The quick brown fox",
           "Please route this ticket to billing with", "Invoice", "{"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


def test_a_random_model_rarely_writes_json_unconstrained_and_always_does_under_the_schema():
    model, tok = tiny_llama(), tiny_tokenizer()
    free = generate(model, tok, PROMPTS, max_new_tokens=64, batch_size=4)
    constrained = generate(model, tok, PROMPTS, max_new_tokens=64, batch_size=4, grammar=compile_schema(SCHEMA))
    assert sum(parse_json_object(o) is not None for o in free) < len(PROMPTS) / 2
    for out in constrained:
        jsonschema.validate(json.loads(out), SCHEMA)  # the whole answer is the JSON, nothing around it
    assert generate(model, tok, PROMPTS, max_new_tokens=64, batch_size=1,
                    grammar=compile_schema(SCHEMA)) == constrained  # batching does not leak grammar state


def test_an_invalid_schema_is_refused_before_anything_is_generated():
    with pytest.raises(ConfigError, match="json_schema"):
        compile_schema({"type": "no-such-type"})


def test_the_invoice_schema_accepts_every_answer_the_generator_writes():
    import random

    schema, rng = invoice_json_schema(), random.Random(0)
    compile_schema(schema)
    for _ in range(50):
        answer = json.loads(invoice_example(rng)["messages"][1]["content"])
        jsonschema.validate(answer, schema)
