import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraops.data.pii import iban_valid, luhn_valid, redact


@pytest.mark.parametrize("text, expected, kind", [
    ("write to anna.schmidt+bills@acme.example.com today", "write to [EMAIL] today", "EMAIL"),
    ("call +49 30 5033058 now", "call [PHONE] now", "PHONE"),
    ("call (555) 123-4567", "call [PHONE]", "PHONE"),
    ("call 555-123-4567", "call [PHONE]", "PHONE"),
    ("pay with 4111 1111 1111 1111.", "pay with [CARD].", "CARD"),
    ("pay with 5500-0000-0000-0004", "pay with [CARD]", "CARD"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN [IBAN] please", "IBAN"),
    ("IBAN GB82WEST12345698765432.", "IBAN [IBAN].", "IBAN"),
    ("SSN 123-45-6789", "SSN [SSN]", "SSN"),
    ("from 192.168.1.10, port 80", "from [IP], port 80", "IP"),
    ("host fe80::1.", "host [IP].", "IP"),
    ("host 2001:db8::ff00:42:8329 up", "host [IP] up", "IP"),
])
def test_each_pii_type_is_replaced_by_its_placeholder(text, expected, kind):
    redacted, counts = redact(text)
    assert redacted == expected
    assert counts == {kind: 1}


def test_luhn_invalid_card_is_not_redacted():
    assert not luhn_valid("4111111111111112")
    assert redact("card 4111 1111 1111 1112")[0] == "card 4111 1111 1111 1112"


def test_iban_with_wrong_check_digits_is_not_redacted():
    assert not iban_valid("GB83WEST12345698765432")
    assert redact("IBAN GB83WEST12345698765432")[0] == "IBAN GB83WEST12345698765432"


def test_invalid_ssn_area_is_not_an_ssn():
    assert "[SSN]" not in redact("id 666-12-3456")[0]


@pytest.mark.parametrize("text", [
    "invoice no. RE2025007387 was issued on 28 January 2023.",
    "Amount due: £23,766.98, due 17.01.2024 2024-03-01",
    '{"vendor": "Acme GmbH", "date": "2024-03-01", "total": 99.5}',
    "order 1234567890 shipped; meeting 10:30:00; std::vector; version 1.2.3",
])
def test_numbers_that_are_not_pii_stay(text):
    assert redact(text) == (text, {})


def _luhn_complete(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


@settings(max_examples=200, deadline=None)
@given(body=st.text("0123456789", min_size=15, max_size=15), sep=st.sampled_from(["", " ", "-"]),
       before=st.text(st.characters(whitelist_categories=["L", "Zs"]), max_size=20),
       after=st.text(st.characters(whitelist_categories=["L", "Zs"]), max_size=20))
def test_card_placeholder_never_leaks_the_digits(body, sep, before, after):
    number = _luhn_complete(body)
    written = sep.join(number[i:i + 4] for i in range(0, 16, 4))
    redacted, _ = redact(f"{before} {written} {after}")
    assert "[CARD]" in redacted
    assert not re.search(r"\d{4}", redacted)


@settings(max_examples=200, deadline=None)
@given(user=st.from_regex(r"[a-z][a-z0-9._]{0,15}", fullmatch=True),
       domain=st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(com|org|de)", fullmatch=True))
def test_email_placeholder_never_leaks_the_address(user, domain):
    redacted, counts = redact(f"mail {user}@{domain}, thanks")
    assert redacted == "mail [EMAIL], thanks" and counts == {"EMAIL": 1}
