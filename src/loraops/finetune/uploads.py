"""Check an uploaded training file before anything is stored: every non-blank line is one of the
record shapes curation reads (data/formats.py: chat `messages`, `prompt`/`completion`, `text`),
chat lines fit the base's chat template, and the file's tokens are counted for the quota."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.data.formats import parse_line, to_output
from loraops.errors import ConfigError, DataFormatError
from loraops.finetune.errors import InvalidFileError

MAX_ERRORS = 5
_BATCH = 512  # records tokenized per tokenizer call


@dataclass(frozen=True)
class FileCheck:
    records: int
    tokens: int  # prompt + completion (or text) tokens of every record, as the base tokenizes them


def check_training_file(path: Path, tokenizer: Any) -> FileCheck:
    """Raises InvalidFileError naming the first MAX_ERRORS bad lines (1-based), or saying the file
    holds no record."""
    errors: list[str] = []
    records, tokens, texts = 0, 0, []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                out = to_output(parse_line(raw, line_no), tokenizer)
            except DataFormatError as e:
                errors.append(f"line {e.line}: {e.reason}")
                if len(errors) == MAX_ERRORS:
                    break
                continue
            except ConfigError as e:  # the base's chat template cannot render chat data at all
                raise InvalidFileError(f"line {line_no}: {e}", param="file") from None
            records += 1
            texts.append(out["prompt"] + out["completion"] if "prompt" in out else out["text"])
            if len(texts) == _BATCH:
                tokens += _count(tokenizer, texts)
                texts = []
    if errors:
        more = f" (showing the first {MAX_ERRORS}; there may be more)" if len(errors) == MAX_ERRORS else ""
        raise InvalidFileError(f"the file is not a valid training file{more}: " + "; ".join(errors),
                               param="file")
    if records == 0:
        raise InvalidFileError("the file holds no records: expected one JSON object per line with "
                               '"messages", "prompt"/"completion" or "text"', param="file")
    return FileCheck(records, tokens + _count(tokenizer, texts))


def _count(tokenizer: Any, texts: list[str]) -> int:
    if not texts:
        return 0
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
