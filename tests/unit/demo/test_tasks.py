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


def _labels(record: dict) -> tuple[str, str]:
    answer = json.loads(record["messages"][-1]["content"])
    return answer["category"], answer["priority"]


def test_ticket_labels_come_in_balanced_blocks():
    from collections import Counter

    fresh = generate("tickets", 160, duplicate_rate=0)
    for start in range(0, 160, 16):
        assert len(set(map(_labels, fresh[start:start + 16]))) == 16  # every pair once per block of 16
    counts = Counter(c for c, _ in map(_labels, generate("tickets", 400)))
    assert max(counts.values()) - min(counts.values()) < 0.1 * 400


def test_tickets_rarely_repeat_by_accident_and_mix_languages():
    fresh = [r["messages"][0]["content"] for r in generate("tickets", 500, duplicate_rate=0)]
    assert len(set(fresh)) >= 0.99 * len(fresh)
    assert sum("Hola" in t or "Bonjour" in t or "Hallo" in t or "Guten Tag" in t for t in fresh) > 20


def test_planted_near_duplicates_differ_from_their_original_by_a_few_words():
    records = generate("tickets", 400, duplicate_rate=0.1)
    texts = [r["messages"][0]["content"] for r in records]
    exact = len(texts) - len(set(texts))
    near = sum(any(t != u and t.startswith(u) and len(t) - len(u) < 20 for u in texts[:i]) for i, t in enumerate(texts))
    assert exact > 10 and near > 10


def test_the_json_schemas_accept_the_reference_answers():
    import jsonschema

    from loraops.demo.tasks import SCHEMAS

    for task, schema in SCHEMAS.items():
        for record in generate(task, 50):
            jsonschema.validate(json.loads(record["messages"][-1]["content"]), schema())
