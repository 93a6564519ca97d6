"""The engine's log-probabilities (token ids and numbers, events.TokenLogprob) -> OpenAI's shapes:
completions' `{tokens, token_logprobs, top_logprobs, text_offset}` and chat's `content[]` of
`{token, logprob, bytes, top_logprobs}`.

A token's bytes come from llguidance's view of the tokenizer (the one constrained decoding uses):
exact for byte-level and byte-fallback vocabularies, where one token may be part of a UTF-8
character. Its `token` string is those bytes as text, or, when they are not valid UTF-8 on their
own, "bytes:\\xe2\\x80" (OpenAI's convention); special tokens (EOS) show their name and have no
bytes (`null`), as they add nothing to the text. `text_offset[i]` is the number of characters the
tokens before i decode to (plus the echoed prompt's length for generated tokens): a token that ends
a multi-byte character has the offset of that character.
"""

from __future__ import annotations

import codecs
from functools import lru_cache

from loraops.serve.events import TokenLogprob

UNLIKELY = -9999.0        # OpenAI's stand-in for a log-prob too small to say (-inf is not JSON)


class TokenTable:
    """Per token id: its bytes (None for a special token) and its `token` string."""

    def __init__(self, tokenizer, n_vocab: int):
        from loraops.serve.grammar import _ll_tokenizer

        self._ll = _ll_tokenizer(tokenizer, n_vocab)
        self._cache: dict[int, tuple[bytes | None, str]] = {}

    def get(self, token: int) -> tuple[bytes | None, str]:
        hit = self._cache.get(token)
        if hit is None:
            raw = self._ll.decode_bytes([token])
            if self._ll.is_special_token(token):
                hit = (None, raw.decode("utf-8", "replace"))
            else:
                try:
                    hit = (raw, raw.decode("utf-8"))
                except UnicodeDecodeError:
                    hit = (raw, "bytes:" + "".join(f"\\x{b:02x}" for b in raw))
            self._cache[token] = hit
        return hit

    def text(self, token: int) -> str:
        return self.get(token)[1]


@lru_cache(maxsize=4)
def token_table(tokenizer, n_vocab: int) -> TokenTable:
    """Built once per tokenizer (llguidance's conversion takes seconds on a 262k vocabulary: call it
    off the event loop)."""
    return TokenTable(tokenizer, n_vocab)


def _lp(x: float) -> float:
    return max(x, UNLIKELY)


class TextOffsets:
    """Character offsets of consecutive tokens in the text they decode to."""

    def __init__(self, table: TokenTable, start: int = 0):
        self.table, self.pos = table, start
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def next(self, token: int) -> int:
        at = self.pos
        raw = self.table.get(token)[0]
        if raw:
            self.pos += len(self._utf8.decode(raw))
        return at


def completion_logprobs(entries: list[tuple[int, TokenLogprob | None]], table: TokenTable,
                        offsets: TextOffsets) -> dict:
    """(token id, its TokenLogprob or None for the prompt's first token) per token -> completions'
    logprobs object. Its top_logprobs hold the k most likely tokens and the token itself (so up to
    k + 1 entries, as OpenAI documents)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token, lp in entries:
        out["tokens"].append(table.text(token))
        out["text_offset"].append(offsets.next(token))
        if lp is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(_lp(lp.logprob))
        top = {table.text(t): _lp(v) for t, v in lp.top}
        top.setdefault(table.text(token), _lp(lp.logprob))
        out["top_logprobs"].append(top)
    return out


def _chat_entry(table: TokenTable, token: int, logprob: float) -> dict:
    raw, text = table.get(token)
    return {"token": text, "logprob": _lp(logprob), "bytes": None if raw is None else list(raw)}


def chat_logprobs(entries: list[TokenLogprob], table: TokenTable) -> list[dict]:
    """Per generated token -> chat's logprobs.content entries (top_logprobs: the k most likely)."""
    return [{**_chat_entry(table, lp.token_id, lp.logprob),
             "top_logprobs": [_chat_entry(table, t, v) for t, v in lp.top]} for lp in entries]
