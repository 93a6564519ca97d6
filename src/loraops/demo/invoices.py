"""The invoice-extraction tenant: an invoice e-mail -> JSON {vendor, invoice_number, date, due_date,
total, currency}.

Varied templates, noise lines and PII (e-mail addresses, phones, IBANs) for curation to scrub.
Dates in the answer are ISO; the e-mails write them as ISO, "DD.MM.YYYY" (day first, always: the
German convention, never the US month-first order, so every written date has one reading),
"Month D, YYYY" or "D Month YYYY".
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

INSTRUCTION = ("Extract the invoice fields from this e-mail as JSON with keys vendor, invoice_number, "
               "date, due_date, total, currency. Use null for a missing field.")

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
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n\n" + "\n".join(lines)},
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


def invoice_examples(rng: random.Random) -> Iterator[dict]:
    while True:
        yield invoice_example(rng)
