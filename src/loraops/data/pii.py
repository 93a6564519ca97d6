"""PII redaction: replace e-mails, IBANs, payment cards, US SSNs, IP addresses and phone numbers by typed
placeholders ([EMAIL], [IBAN], [CARD], [SSN], [IP], [PHONE]).

Patterns find candidates; checksums decide where one exists (Luhn for cards, mod-97 for IBANs, the
ipaddress module for IPs), so invoice numbers, amounts and dates that merely look numeric stay. The
order matters: each pass runs on the output of the previous one, so an e-mail's digits are gone before
the phone pass, and a card number is claimed before it could pass for a phone number.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Callable

_MAYBE_PII = re.compile(r"[0-9@]|::")  # every PII type has a digit, an @ or (IPv6) a ::
_EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,8}(?:[ .-]\d{2,8}){0,4}(?!\w)")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 mod-97: move the first four characters to the end, letters → 10..35, remainder must be 1."""
    iban = iban.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    return int("".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])) % 97 == 1


def _card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ip(m: re.Match) -> bool:
    try:
        ipaddress.ip_address(m.group())
    except ValueError:
        return False
    return True


def _phone(m: re.Match) -> bool:
    """International (+…), area code in parentheses, or two or more of one separator; 9–15 digits. Bare
    digit runs are more often ids than phone numbers; mixed separators are dates next to numbers."""
    s = m.group()
    n_digits = sum(ch.isdigit() for ch in s)
    separators = re.findall(r"[ .-]", s)
    structured = s.startswith(("+", "(")) or (len(separators) >= 2 and len(set(separators)) == 1)
    return structured and 9 <= n_digits <= 15


_PASSES: list[tuple[str, re.Pattern, Callable[[re.Match], bool]]] = [
    ("EMAIL", _EMAIL, lambda m: True),
    ("IBAN", _IBAN, lambda m: iban_valid(m.group())),
    ("CARD", _CARD, _card),
    ("SSN", _SSN, lambda m: True),
    ("IP", _IPV6, _ip),
    ("IP", _IPV4, _ip),
    ("PHONE", _PHONE, _phone),
]


def redact(text: str) -> tuple[str, Counter[str]]:
    """-> (text with placeholders, how many of each PII type were replaced)."""
    found: Counter[str] = Counter()
    if not _MAYBE_PII.search(text):  # most strings: skip the seven passes
        return text, found
    for kind, pattern, accept in _PASSES:
        def sub(m: re.Match, kind: str = kind, accept: Callable[[re.Match], bool] = accept) -> str:
            if not accept(m):
                return m.group()
            found[kind] += 1
            return f"[{kind}]"
        text = pattern.sub(sub, text)
    return text, found
