"""Constrained decoding for evaluation: every generated row is JSON that follows one schema.

The grammar machinery is the server's (`serve.grammar`: an llguidance matcher per row, our
bitmask); here it is a transformers logits processor, so the eval's batched greedy `generate`
drives it. Needs the `serve` extra (llguidance, jsonschema).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from loraops.errors import ConfigError


def compile_schema(schema: dict) -> Any:
    """Validate and compile `schema` once, at the edge -> serve.grammar.Grammar. ConfigError if it
    is not a JSON schema llguidance can enforce, or the serve extra is missing."""
    try:
        from loraops.serve.grammar import InvalidResponseFormatError, compile_grammar
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError(f"constrained evaluation needs the serve extra (llguidance, jsonschema): {e}") from None
    # llguidance allows any whitespace between tokens by default; a weak model then pads with
    # newlines until it runs out of tokens. Pin json.dumps' separators, the format of the references.
    pinned = {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}, **schema}
    try:
        return compile_grammar(pinned)
    except InvalidResponseFormatError as e:
        raise ConfigError(f"json_schema: {e}") from None


def schema_digest(schema: dict) -> str:
    from loraops.serve.grammar import dumps_schema

    return "sha256:" + hashlib.sha256(dumps_schema(schema).encode()).hexdigest()


class SchemaLogits:
    """A transformers LogitsProcessor holding one grammar state per row of one generate() batch.

    Each call first advances every live row with the token it just drew, then picks its next token
    as the server does for a greedy row (`RowConstraint.choose`: the argmax among the tokens that
    leave room to close the JSON within `max_new_tokens`) and leaves only that one allowed. A row
    whose JSON is complete may only draw `end` (generate then pads it); a row that drew a stop token
    is left alone, since generate keeps feeding it pad tokens the grammar would reject."""

    def __init__(self, grammar: Any, tokenizer: Any, n_vocab: int, rows: int, prompt_width: int,
                 stops: Sequence[int], max_new_tokens: int):
        from loraops.serve.grammar import RowConstraint

        self.rows = [RowConstraint(grammar, tokenizer, n_vocab) for _ in range(rows)]
        self.prompt_width = prompt_width
        self.max_new_tokens = max_new_tokens
        self.stops = set(stops)
        self.end = tokenizer.eos_token_id if tokenizer.eos_token_id in self.stops else min(self.stops)
        self.finished = [False] * rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """input_ids: [rows, prompt_width + drawn so far]; scores: [rows, vocab] -> masked in place."""
        if input_ids.shape[1] > self.prompt_width:  # not the first step: every row drew one token
            for i, token in enumerate(input_ids[:, -1].tolist()):
                if self.finished[i]:
                    continue
                if token in self.stops:
                    self.finished[i] = True
                else:
                    self.rows[i].advance(token)
        left = self.max_new_tokens - (input_ids.shape[1] - self.prompt_width)
        for i, row in enumerate(self.rows):
            token = self.end if self.finished[i] or row.done else row.choose(scores[i], _argmax, left)
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores


def _argmax(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))
