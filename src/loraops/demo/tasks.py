"""The demo tenants' tasks, generated deterministically (no downloaded data): see invoices.py
(e-mail -> invoice JSON) and tickets.py (support ticket -> routing JSON).

Records are OpenAI chat lines ({"messages": [...]}) so curation exercises chat-template rendering.
`generate` mixes in deliberate exact copies and near copies (one word added) for dedup to find;
the generators themselves rarely repeat (slots, templates, noise), so what curation drops is what
was put there on purpose.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from loraops.atomic import write_text
from loraops.demo.invoices import invoice_example, invoice_examples, invoice_json_schema
from loraops.demo.tickets import ticket_examples, ticket_json_schema

GENERATORS = {"invoices": invoice_examples, "tickets": ticket_examples}
SCHEMAS = {"invoices": invoice_json_schema, "tickets": ticket_json_schema}
_NEAR_EDITS = [" Thanks.", " Thank you!", " Regards.", " Best wishes."]

__all__ = ["GENERATORS", "SCHEMAS", "generate", "invoice_example", "invoice_json_schema", "ticket_json_schema",
           "write", "_iban"]


def _near_copy(record: dict, rng: random.Random) -> dict:
    """The record with one word added at the end of its prompt: a near duplicate, not an exact one."""
    near = json.loads(json.dumps(record))
    near["messages"][-2]["content"] += rng.choice(_NEAR_EDITS)
    return near


def generate(task: str, n: int, seed: int = 0, duplicate_rate: float = 0.05) -> list[dict]:
    """n records; about duplicate_rate of them exact copies and as many near copies."""
    rng = random.Random(f"{task}-{seed}")
    fresh = GENERATORS[task](rng)
    records: list[dict] = []
    while len(records) < n:
        roll = rng.random()
        if records and roll < duplicate_rate:
            records.append(json.loads(json.dumps(rng.choice(records))))
        elif records and roll < 2 * duplicate_rate:
            records.append(_near_copy(rng.choice(records), rng))
        else:
            records.append(next(fresh))
    return records


def write(task: str, path: str | Path, n: int, seed: int = 0) -> Path:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in generate(task, n, seed)))
    return Path(path)
