"""Two synthetic tenants' tasks, generated deterministically (no downloaded data).

invoices: an invoice e-mail -> JSON {vendor, invoice_number, date, due_date, total, currency}.
          Varied templates, noise lines, PII (e-mail addresses, phones, IBANs) for curation to
          scrub, and deliberate exact and near duplicates for dedup to find.
tickets:  a support message -> JSON {category, priority}.
Records are OpenAI chat lines ({"messages": [...]}) so curation exercises chat-template rendering.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from loraops.atomic import write_text

INVOICE_INSTRUCTION = ("Extract the invoice fields from this e-mail as JSON with keys vendor, invoice_number, "
                       "date, due_date, total, currency. Use null for a missing field.")
TICKET_INSTRUCTION = ("Route this support ticket. Answer JSON with keys category (billing, technical, account, "
                      "shipping) and priority (low, normal, high, urgent).")

_VENDORS = ["Acme GmbH", "Globex Corporation", "Initech Ltd", "Umbrella Supplies", "Stark Industrial",
            "Wayne Logistics", "Hooli Cloud", "Vandelay Imports", "Soylent Foods BV", "Tyrell Components",
            "Cyberdyne Systems", "Wonka Confectionery", "Oceanic Freight SA", "Nakatomi Trading",
            "Massive Dynamic", "Blue Sun Retail", "Aperture Labs", "Gringotts Services"]
_CURRENCIES = [("EUR", "€", "{v:,.2f} EUR"), ("USD", "$", "${v:,.2f}"), ("GBP", "£", "£{v:,.2f}"),
               ("CHF", "CHF", "CHF {v:,.2f}")]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_NOISE = ["Please do not reply to this automated message.", "Thank you for your business!",
          "Our office will be closed on public holidays.", "Questions? Call our helpdesk.",
          "Consider the environment before printing this e-mail.", "Kind regards,"]
_NAMES = ["Anna Schmidt", "John Miller", "Priya Patel", "Lukas Novak", "Maria Garcia", "Chen Wei"]


def _date(rng: random.Random) -> tuple[str, str]:
    """-> (ISO date, how the e-mail writes it)."""
    y, m, d = rng.choice([2023, 2024, 2025]), rng.randint(1, 12), rng.randint(1, 28)
    iso = f"{y:04d}-{m:02d}-{d:02d}"
    shown = rng.choice([iso, f"{d:02d}.{m:02d}.{y}", f"{_MONTHS[m - 1]} {d}, {y}", f"{d} {_MONTHS[m - 1]} {y}"])
    return iso, shown


def _iban(rng: random.Random) -> str:
    """A German IBAN with valid mod-97 check digits (so PII scrubbing must catch it)."""
    bban = "".join(str(rng.randint(0, 9)) for _ in range(18))
    digits = int(bban + "131400")  # "DE" -> 13 14, then "00"
    return f"DE{98 - digits % 97:02d}{bban}"


def invoice_example(rng: random.Random) -> dict:
    vendor = rng.choice(_VENDORS)
    code, _, fmt = rng.choice(_CURRENCIES)
    total = round(rng.uniform(12, 25000), 2)
    number = rng.choice(["INV-{}-{:04d}", "{}/{:05d}", "RE{}{:06d}"]).format(rng.randint(2023, 2025),
                                                                             rng.randint(1, 99999))
    date_iso, date_shown = _date(rng)
    has_due = rng.random() < 0.7
    due_iso, due_shown = _date(rng) if has_due else (None, None)
    person = rng.choice(_NAMES)
    email = f"{person.split()[0].lower()}.{person.split()[1].lower()}@{vendor.split()[0].lower()}.example.com"
    lines = [rng.choice([f"Subject: Invoice {number}", f"Subject: Your invoice from {vendor}",
                         f"Subject: {vendor} - invoice {number}"]),
             rng.choice(["Dear customer,", "Hello,", "Hi team,", f"Dear {rng.choice(_NAMES)},"]),
             rng.choice([f"please find attached invoice {number} dated {date_shown}.",
                         f"invoice no. {number} was issued on {date_shown}.",
                         f"this is invoice {number} ({date_shown}) for your recent order."]),
             rng.choice([f"The total amount is {fmt.format(v=total)}.", f"Amount due: {fmt.format(v=total)}",
                         f"Total: {fmt.format(v=total)} (incl. VAT)"])]
    if has_due:
        lines.append(rng.choice([f"Payment is due by {due_shown}.", f"Due date: {due_shown}"]))
    if rng.random() < 0.5:
        lines.append(f"Bank transfer to IBAN {_iban(rng)}.")
    rng.shuffle(lines[2:])
    lines += rng.sample(_NOISE, k=rng.randint(0, 2))
    lines += [person, f"{vendor} | {email} | +49 30 {rng.randint(1000000, 9999999)}"]
    answer = {"vendor": vendor, "invoice_number": number, "date": date_iso, "due_date": due_iso,
              "total": total, "currency": code}
    return {"messages": [{"role": "user", "content": f"{INVOICE_INSTRUCTION}\n\n" + "\n".join(lines)},
                         {"role": "assistant", "content": json.dumps(answer)}]}


_ISO_DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}


def invoice_json_schema() -> dict:
    """The JSON schema of `invoice_example`'s answer: its keys in its order, all required (due_date
    may be null), nothing else. String lengths are capped so a constrained decoder always ends."""
    text = {"type": "string", "minLength": 1, "maxLength": 64}
    return {"type": "object",
            "properties": {"vendor": text, "invoice_number": text, "date": _ISO_DATE,
                           "due_date": {"anyOf": [_ISO_DATE, {"type": "null"}]},
                           "total": {"type": "number"}, "currency": {"enum": [c for c, _, _ in _CURRENCIES]}},
            "required": ["vendor", "invoice_number", "date", "due_date", "total", "currency"],
            "additionalProperties": False}


_TICKETS = {
    "billing": ["I was charged twice for my subscription this month.", "My invoice shows the wrong VAT number.",
                "Can I get a refund for the unused months?", "The payment failed but money left my account."],
    "technical": ["The app crashes when I upload a file larger than 10 MB.", "I get error 502 on the dashboard.",
                  "Sync has stopped working since the last update.", "The API returns timeouts for every request."],
    "account": ["I cannot reset my password, the link expired.", "Please delete my account and all my data.",
                "How do I add a second admin to our workspace?", "My account was locked after two logins."],
    "shipping": ["My parcel has not arrived after three weeks.", "The tracking number does not work.",
                 "The package arrived damaged.", "Can I change the delivery address of my order?"],
}
_URGENCY = {"urgent": ["Our whole company is blocked, please help immediately!", "This is a production outage."],
            "high": ["This is blocking my work today.", "Please fix this as soon as possible."],
            "normal": ["Thanks for looking into it.", "Let me know what you need from me."],
            "low": ["No rush, whenever you have time.", "Just a question for later."]}


def ticket_example(rng: random.Random) -> dict:
    category = rng.choice(list(_TICKETS))
    priority = rng.choice(list(_URGENCY))
    body = " ".join([rng.choice(_TICKETS[category]), rng.choice(_URGENCY[priority])])
    if rng.random() < 0.3:
        body += f" You can reach me at {rng.choice(_NAMES).split()[0].lower()}{rng.randint(1, 99)}@mail.example.org."
    return {"messages": [{"role": "user", "content": f"{TICKET_INSTRUCTION}\n\nTicket: {body}"},
                         {"role": "assistant", "content": json.dumps({"category": category, "priority": priority})}]}


def generate(task: str, n: int, seed: int = 0, duplicate_rate: float = 0.05) -> list[dict]:
    """n records; about duplicate_rate of them exact copies and as many near copies (one word changed)."""
    make = {"invoices": invoice_example, "tickets": ticket_example}[task]
    rng = random.Random(f"{task}-{seed}")
    records: list[dict] = []
    while len(records) < n:
        roll = rng.random()
        if records and roll < duplicate_rate:
            records.append(json.loads(json.dumps(rng.choice(records))))
        elif records and roll < 2 * duplicate_rate:
            near = json.loads(json.dumps(rng.choice(records)))
            near["messages"][0]["content"] = near["messages"][0]["content"].replace("Hello,", "Hello there,", 1)
            records.append(near)
        else:
            records.append(make(rng))
    return records


def write(task: str, path: str | Path, n: int, seed: int = 0) -> Path:
    write_text(path, "".join(json.dumps(r) + "\n" for r in generate(task, n, seed)))
    return Path(path)
