"""Quality rules: each names why a record is not worth training on, or passes."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from loraops.data.formats import Record
from loraops.errors import ConfigError


@dataclass(frozen=True)
class QualityOptions:
    min_completion_chars: int = 1
    max_completion_chars: int = 32_000
    max_repetition_ratio: float = 0.5  # share of the completion's word 3-grams that repeat an earlier one
    max_non_text_ratio: float = 0.3    # share of characters not letters, digits, punctuation or spaces

    def __post_init__(self) -> None:
        if not 0 <= self.min_completion_chars <= self.max_completion_chars:
            raise ConfigError("need 0 <= min_completion_chars <= max_completion_chars")
        for name in ("max_repetition_ratio", "max_non_text_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1]")


def repetition_ratio(text: str, n: int = 3) -> float:
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


_ASCII_NON_TEXT = re.compile(r"[\x00-\x08\x0e-\x1b\x7f$+<=>^`|~]")  # ASCII controls and symbols
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def non_text_ratio(text: str) -> float:
    """Symbols, control and unassigned characters (binary debris, mojibake, emoji walls) per character,
    spaces excepted. ASCII is classified by one regex, the rest per character: most text is mostly ASCII."""
    if not text:
        return 0.0
    bad = len(_ASCII_NON_TEXT.findall(text))
    bad += sum(1 for ch in _NON_ASCII.findall(text)
               if not ch.isspace() and unicodedata.category(ch)[0] not in "LNP")
    return bad / len(text)


def failed_rule(record: Record, opts: QualityOptions) -> str | None:
    """The first rule `record` breaks, in this order: empty_completion, too_short, too_long, repetition,
    non_text, prompt_equals_completion; or None."""
    completion = record.completion
    if not completion.strip():
        return "empty_completion"
    if len(completion) < opts.min_completion_chars:
        return "too_short"
    if len(completion) > opts.max_completion_chars:
        return "too_long"
    if repetition_ratio(completion) > opts.max_repetition_ratio:
        return "repetition"
    if non_text_ratio("".join(record.texts())) > opts.max_non_text_ratio:
        return "non_text"
    if record.kind != "text" and completion.strip() == _last_prompt(record).strip():
        return "prompt_equals_completion"
    return None


def _last_prompt(record: Record) -> str:
    """What the completion answers: the prompt, or the chat turn before the last assistant message."""
    return record.history[-1].content if record.history else record.prompt
