import pytest

from loraops.data.filters import QualityOptions, failed_rule, non_text_ratio, repetition_ratio
from loraops.data.formats import Message, Record
from loraops.errors import ConfigError

OPTS = QualityOptions(min_completion_chars=3, max_completion_chars=100)


def pair(prompt: str, completion: str) -> Record:
    return Record("completion", 1, completion=completion, prompt=prompt)


@pytest.mark.parametrize("record, rule", [
    (pair("Q", "   "), "empty_completion"),
    (pair("Q", "ok"), "too_short"),
    (pair("Q", "x" * 101), "too_long"),
    (pair("Q", "buy now " * 10), "repetition"),
    (pair("Q", "☃☃☃☃ ok ☃☃☃☃"), "non_text"),
    (pair("Say it back", "Say it back"), "prompt_equals_completion"),
    (Record("chat", 1, completion="echo", history=(Message("user", "echo"),)), "prompt_equals_completion"),
])
def test_each_quality_rule_drops_what_it_names(record, rule):
    assert failed_rule(record, OPTS) == rule


def test_a_good_record_passes_every_rule():
    assert failed_rule(pair("Total?", '{"total": 99.5, "currency": "EUR"}'), OPTS) is None


def test_text_record_equal_to_nothing_is_not_an_echo():
    assert failed_rule(Record("text", 1, completion="some plain text"), OPTS) is None


def test_ratios_on_plain_text_are_low():
    text = "The quick brown fox jumps over the lazy dog."
    assert repetition_ratio(text) == 0 and non_text_ratio(text) == 0


def test_inconsistent_thresholds_are_refused():
    with pytest.raises(ConfigError):
        QualityOptions(min_completion_chars=10, max_completion_chars=5)
    with pytest.raises(ConfigError):
        QualityOptions(max_repetition_ratio=1.5)
