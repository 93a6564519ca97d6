"""Domain metrics as pure functions over strings: exact match, token F1, JSON field accuracy and
hallucinated fields. No model, no I/O: everything here is testable on hand-made cases.

Exact match on a JSON reference means the prediction is exactly that object and nothing else
(`json_exact_match`). Text answers are compared after SQuAD's normalisation (lower-case, punctuation and the articles
a/an/the removed, whitespace collapsed). JSON field values are compared after `normalize_value`
(strings case-folded and whitespace-collapsed, numbers compared numerically, "1,234.56" == 1234.56).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
# A number as people write it in text: 1234, 1,234.56 (a sign is compared away: "INV-2024" holds 2024).
_NUMBER_RE = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")
_WHOLE_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over normalised whitespace tokens; two empty answers agree (1.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---- JSON extraction -------------------------------------------------------------------------


def parse_json_object(text: str) -> dict | None:
    """The first JSON object in `text` (models often add words around it), or None."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return obj if isinstance(obj, dict) else None
    return None


def parse_number(value: Any) -> float | None:
    """A JSON number, or a string that is exactly a number as written by people ("1,234.56")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
        return float(value.strip().replace(",", ""))
    return None


def _collapse(text: str) -> str:
    return " ".join(text.casefold().split())


def normalize_value(value: Any) -> Any:
    """A field value in comparable form: a float for numbers, a case-folded whitespace-collapsed
    string for text, recursively for lists and objects; None and bools stay as they are."""
    number = parse_number(value)
    if number is not None:
        return number
    if isinstance(value, str):
        return _collapse(value)
    if isinstance(value, list):
        return [normalize_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): normalize_value(v) for k, v in value.items()}
    return value


def values_equal(predicted: Any, expected: Any) -> bool:
    a, b = normalize_value(predicted), normalize_value(expected)
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in a JSON field
        return a is b
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


@dataclass(frozen=True)
class FieldResult:
    """One example's JSON fields: which expected fields the prediction got right."""

    correct: dict[str, bool]  # expected field -> predicted value equals it (missing = False)
    parse_failure: bool  # prediction had no JSON object: every field counts as wrong


def field_accuracy(prediction: str, expected: dict) -> FieldResult:
    predicted = parse_json_object(prediction)
    if predicted is None:
        return FieldResult({k: False for k in expected}, parse_failure=True)
    return FieldResult({k: k in predicted and values_equal(predicted[k], v) for k, v in expected.items()}, False)


def json_exact_match(prediction: str, expected: dict) -> float:
    """1.0 when the prediction is nothing but the expected object: every field equal (as field accuracy
    compares them), no extra key, no text around it. The reference's own text is not compared, so a
    chat template's end-of-turn marker left on it ("...}<end_of_turn>") cannot fail every example."""
    text = prediction.strip()
    try:
        predicted, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return 0.0
    if end != len(text) or not isinstance(predicted, dict) or set(predicted) != set(expected):
        return 0.0
    return float(all(values_equal(predicted[k], v) for k, v in expected.items()))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]
_ISO_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
# Extraction tasks normalise what they copy: a currency code stands for its symbol in the text.
_CURRENCY_SYMBOLS = {"USD": ("$", "us$", "dollar"), "EUR": ("€", "euro"), "GBP": ("£", "pound"),
                     "JPY": ("¥", "yen"), "CHF": ("fr.", "franc"), "INR": ("₹", "rupee")}


def _date_spellings(y: int, m: int, d: int) -> list[str]:
    """The common ways to write one date (ISO, European, US, long forms), case-folded."""
    month = _MONTHS[m - 1]
    return [f"{y:04d}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}", f"{d}.{m}.{y}", f"{d:02d}/{m:02d}/{y}",
            f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}", f"{month} {d}, {y}", f"{month} {d} {y}",
            f"{d} {month} {y}", f"{month[:3]} {d}, {y}", f"{d} {month[:3]} {y}"]


def is_supported(value: Any, source: str) -> bool:
    """Does `value` occur in `source`, as written or in a form an extraction normalises it to?
    Numbers (and numeric strings): some number written in `source` is numerically equal, so 1234.56
    is supported by "1,234.56" but 23 is not by "1,234". ISO dates: the date written in any common
    spelling ("2024-09-11" by "11.09.2024" or "September 11, 2024"). Currency codes: the code or its
    symbol ("USD" by "$"). Other strings: case-folded, whitespace-collapsed substring."""
    text = _collapse(source)
    if isinstance(value, str) and (iso := _ISO_DATE_RE.match(value.strip())):
        y, m, d = map(int, iso.groups())
        if 1 <= m <= 12 and 1 <= d <= 31:
            return any(spelling in text for spelling in _date_spellings(y, m, d))
    number = parse_number(value)
    if number is not None:
        return any(math.isclose(float(m.replace(",", "")), abs(number), rel_tol=1e-9, abs_tol=1e-9)
                   for m in _NUMBER_RE.findall(source))
    value_text = _collapse(str(value))
    if value_text.upper() in _CURRENCY_SYMBOLS and any(sym in text for sym in _CURRENCY_SYMBOLS[value_text.upper()]):
        return True
    return value_text in text


def hallucinated_fields(prediction: str, source: str) -> tuple[int, int]:
    """-> (unsupported, checked): among the predicted object's non-empty leaf values (strings and
    numbers; None, "", booleans and empty containers are not claims about the input), how many
    do not occur in `source` (the prompt). An unparseable prediction checks nothing: (0, 0)."""
    predicted = parse_json_object(prediction)
    if predicted is None:
        return 0, 0
    claims = [v for v in _leaves(predicted)
              if not isinstance(v, bool) and v is not None and not (isinstance(v, str) and not v.strip())]
    return sum(not is_supported(v, source) for v in claims), len(claims)


# ---- aggregation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainScores:
    """Scores of one model on a domain set. JSON metrics cover the examples whose reference
    completion is a JSON object (`json_examples` of `examples`); they are None when there are none.

    `primary` names the headline metric: "field_accuracy" when every reference is a JSON object,
    else "f1". The gate and the domain gain use it."""

    examples: int
    exact_match: float
    f1: float
    json_examples: int = 0
    field_accuracy: float | None = None
    per_field_accuracy: dict[str, float] = field(default_factory=dict)
    parse_failures: int = 0
    hallucination_rate: float | None = None
    primary: str = "f1"

    @property
    def primary_value(self) -> float:
        return getattr(self, self.primary)


def score_domain(prompts: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> DomainScores:
    """Aggregate per-example metrics (means; field accuracy and hallucination rate are micro-averaged
    over fields) into DomainScores."""
    if not (len(prompts) == len(predictions) == len(references)) or not references:
        raise ValueError("prompts, predictions and references must be non-empty and of equal length")
    n = len(references)
    f1 = sum(map(token_f1, predictions, references)) / n
    per_field: dict[str, list[bool]] = {}
    json_n = parse_failures = unsupported = checked = 0
    em = 0.0
    for prompt, pred, ref in zip(prompts, predictions, references):
        expected = parse_json_object(ref) if ref.strip().startswith("{") else None
        if expected is None:
            em += exact_match(pred, ref)
            continue
        em += json_exact_match(pred, expected)
        json_n += 1
        result = field_accuracy(pred, expected)
        parse_failures += result.parse_failure
        for k, ok in result.correct.items():
            per_field.setdefault(k, []).append(ok)
        bad, total = hallucinated_fields(pred, prompt)
        unsupported, checked = unsupported + bad, checked + total
    em /= n
    if json_n == 0:
        return DomainScores(n, em, f1)
    fields_total = sum(len(v) for v in per_field.values())
    accuracy = sum(sum(v) for v in per_field.values()) / fields_total if fields_total else 0.0
    return DomainScores(
        n, em, f1, json_n, accuracy, {k: sum(v) / len(v) for k, v in sorted(per_field.items())}, parse_failures,
        unsupported / checked if checked else 0.0, "field_accuracy" if json_n == n else "f1")
