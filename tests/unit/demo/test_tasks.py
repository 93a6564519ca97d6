import json
import re

from loraops.demo.invoices import _iban
from loraops.demo.tasks import generate, write
import random


def test_generation_is_deterministic():
    assert generate("invoices", 50, seed=3) == generate("invoices", 50, seed=3)
    assert generate("invoices", 50, seed=3) != generate("invoices", 50, seed=4)


def test_answers_are_json_supported_by_the_email():
    for rec in generate("invoices", 200):
        prompt, answer = rec["messages"][0]["content"], json.loads(rec["messages"][1]["content"])
        assert answer["vendor"] in prompt and answer["invoice_number"] in prompt
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer["date"])
        assert answer["currency"] in {"EUR", "USD", "GBP", "CHF"}


def test_tickets_route_to_known_labels():
    labels = {(json.loads(r["messages"][1]["content"])["category"], json.loads(r["messages"][1]["content"])["priority"])
              for r in generate("tickets", 300)}
    assert {c for c, _ in labels} == {"billing", "technical", "account", "shipping"}
    assert {p for _, p in labels} == {"low", "normal", "high", "urgent"}


def test_data_contains_exact_duplicates_for_curation():
    lines = [json.dumps(r, sort_keys=True) for r in generate("invoices", 400)]
    assert len(set(lines)) < len(lines)


def test_ibans_pass_the_mod97_check():
    rng = random.Random(0)
    for _ in range(50):
        iban = _iban(rng)
        moved = iban[4:] + iban[:4]
        assert int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def test_write_produces_jsonl(tmp_path):
    path = write("tickets", tmp_path / "t.jsonl", 10)
    assert len(path.read_text().splitlines()) == 10
