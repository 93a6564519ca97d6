"""Constrained decoding for `response_format` (json_object / json_schema), one matcher per row.

Library choice, measured on this CPU with Gemma 3's 262k vocabulary (bench/grammar.py,
docs/benchmarks.md): computing the next-token mask costs llguidance ~0.1 ms and xgrammar ~0.03 ms,
both far below a ~110 ms decode step; xgrammar pulls in triton (~1 GB) on Linux, so we use
llguidance. Its one-time tokenizer conversion (~7 s for Gemma) happens once per server; each
schema then compiles in milliseconds. Applying the mask is ours (`apply_bitmask_`).

Per row: mask(logits) sets every token the grammar forbids to -inf; advance(token) moves the
matcher on. A row finishes when its matcher has stopped (the JSON is complete) or EOS is drawn.

Within a token budget, `choose(logits, pick, left)` also keeps a known way to finish: a closing
path, the tokens that take the grammar from here to an accepting state (forced bytes where there
are any, else the most closing character the grammar allows next: `"` inside a string, `}` or `]`
after a value, `0` for a value). A drawn token is kept only if a closing path after it still fits
in the tokens left; otherwise the row draws again among the rest, and after a few tries takes its
path's next token. So whenever the first closing path fits in max_tokens (`min_tokens`: 1 for
json_object, ~35 for the demo's 6-field invoice schema on Gemma's tokenizer), the answer is
complete and valid, finish_reason "stop": near the end of the budget the row closes its strings,
arrays and objects instead of running out inside them. When it does not fit, the row decodes
freely and ends at max_tokens (finish_reason "length", text that does not parse).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from loraops.errors import LoraOpsError


class InvalidResponseFormatError(LoraOpsError):
    """A response_format the server cannot honour (bad type, invalid JSON schema). HTTP 400."""


@dataclass(frozen=True)
class Grammar:
    """A compiled, validated grammar (llguidance's serialised form) for one response_format."""

    source: str
    schema: dict


def parse_response_format(response_format: dict | None) -> dict | None:
    """OpenAI's response_format -> the JSON schema to enforce, or None for free text."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise InvalidResponseFormatError("response_format must be an object with a 'type'")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidResponseFormatError("response_format.json_schema.schema must be a JSON schema object")
        return spec["schema"]
    raise InvalidResponseFormatError(f"response_format type {kind!r} is not one of text, json_object, json_schema")


# Compiling costs ~0.45 ms per property (llguidance, this CPU): bounded so that one request's schema
# costs at most a few hundred milliseconds, once (GrammarCache).
MAX_SCHEMA_NODES = 1000          # JSON values in the schema (objects, arrays, strings, numbers, ...)
MAX_SCHEMA_BYTES = 32 * 1024     # its compact JSON


def check_schema_size(schema: dict) -> None:
    """Refuse schemas past MAX_SCHEMA_NODES / MAX_SCHEMA_BYTES, before any compiling."""
    nodes, stack = 0, [schema]
    while stack:
        value = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise InvalidResponseFormatError(f"the JSON schema has more than {MAX_SCHEMA_NODES} values; "
                                             f"this server compiles smaller schemas only")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise InvalidResponseFormatError(f"the JSON schema is {size} bytes; this server compiles schemas of at "
                                         f"most {MAX_SCHEMA_BYTES}")


def check_schema(schema: dict, meta: bool = True) -> None:
    """Refuse a schema past the size bounds or (`meta`) not valid under the JSON Schema meta-schema."""
    import jsonschema

    check_schema_size(schema)
    if not meta:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidResponseFormatError(f"invalid JSON schema: {e.message}") from e
    except RecursionError:
        raise InvalidResponseFormatError("the JSON schema nests too deeply") from None


def compile_grammar(schema: dict) -> Grammar:
    """Validate `schema` (size, JSON Schema meta-schema, then llguidance) and compile it."""
    import llguidance

    check_schema(schema)
    try:
        source = llguidance.LLMatcher.grammar_from_json_schema(schema)
    except (ValueError, TypeError, RuntimeError) as e:    # what llguidance raises for schemas it cannot take
        raise InvalidResponseFormatError(f"unsupported JSON schema: {e}") from e
    ok, error = _validate(source)
    if not ok:
        raise InvalidResponseFormatError(f"unsupported JSON schema: {error}")
    return Grammar(source, schema)


def compile_lark(lark: str) -> Grammar:
    """A Lark grammar (llguidance's syntax; tools.tool_grammar builds them, its JSON schemas already
    checked) -> a compiled Grammar."""
    import llguidance

    try:
        source = llguidance.LLMatcher.grammar_from_lark(lark)
    except (ValueError, TypeError, RuntimeError) as e:
        raise InvalidResponseFormatError(f"unsupported JSON schema: {e}") from e
    ok, error = _validate(source)
    if not ok:
        raise InvalidResponseFormatError(f"unsupported JSON schema: {error}")
    return Grammar(source, {})


def _validate(source: str) -> tuple[bool, str]:
    import llguidance

    result = llguidance.LLMatcher.validate_grammar(source)
    error = result[1] if isinstance(result, tuple) else result  # (is_error, msg) or msg across versions
    is_error = result[0] if isinstance(result, tuple) else bool(result)
    return (not is_error, error)


class GrammarCache:
    """Compiled grammars (and refusals) by schema digest, least recently used dropped past `maxsize`:
    a client repeating one schema pays for compiling it once. Thread-safe; two threads compiling the
    same new schema at once both compile it (the result is the same)."""

    def __init__(self, maxsize: int = 128):
        self.maxsize = maxsize
        self._items: OrderedDict[str, Grammar | InvalidResponseFormatError] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, schema: dict) -> Grammar:
        return self._get("schema:" + dumps_schema(schema), lambda: compile_grammar(schema))

    def compile_lark(self, lark: str) -> Grammar:
        return self._get("lark:" + lark, lambda: compile_lark(lark))

    def _get(self, text: str, build) -> Grammar:
        key = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        if hit is None:
            try:
                hit = build()
            except InvalidResponseFormatError as e:
                hit = e
            with self._lock:
                self._items[key] = hit
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
        if isinstance(hit, InvalidResponseFormatError):
            raise InvalidResponseFormatError(str(hit))
        return hit

    def __len__(self) -> int:
        return len(self._items)


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer, n_vocab: int):
    """llguidance's view of an HF tokenizer: built once per (tokenizer, vocab) — it takes seconds."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)


_SHIFTS = torch.arange(32, dtype=torch.int32)


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits: [vocab]; bitmask: int32 [ceil(vocab/32)], bit j of word i allows token 32·i + j.
    Sets disallowed logits to -inf in place. Plain twin: llguidance.torch.apply_token_bitmask_inplace,
    which on CPU took 34 ms per call for a 262k vocabulary; this takes well under a millisecond."""
    allowed = ((bitmask.view(-1, 1) >> _SHIFTS) & 1).view(-1)[: logits.shape[-1]].bool()  # [vocab]
    return logits.masked_fill_(~allowed, float("-inf"))


# The order a closing path tries characters in, most closing first: inside a string, end it (or give
# it the content a pattern or minLength needs); outside, close a container, then the shortest values.
_IN_STRING = '"0aA-'
_OUTSIDE = '}],:0n"tf[{-'
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
MAX_CLOSING = 512    # steps; a longer path counts as none (e.g. a pattern this order keeps extending)
REDRAWS = 8          # draws a row tries before it takes its closing path's next token


@lru_cache(maxsize=4)
def _closing_alphabets(ll_tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Single-token printable ASCII characters as token ids, in the order tried inside a string and
    outside one."""
    def ordered(first: str) -> tuple[int, ...]:
        ids = (ll_tokenizer.tokenize_str(ch) for ch in dict.fromkeys(first + _PRINTABLE))
        return tuple(t[0] for t in ids if len(t) == 1)
    return ordered(_IN_STRING), ordered(_OUTSIDE)


def _in_string(state: tuple[bool, bool], data: bytes) -> tuple[bool, bool]:
    """(inside a JSON string, after a backslash there) once `data` follows: the one lexical fact the
    closing order needs."""
    inside, escaped = state
    for b in data:
        if escaped:
            escaped = False
        elif inside and b == 0x5C:
            escaped = True
        elif b == 0x22:
            inside = not inside
    return inside, escaped


class RowConstraint:
    """The grammar state of one generating row."""

    def __init__(self, grammar: Grammar, tokenizer, n_vocab: int):
        import llguidance
        import llguidance.torch as llt

        self._llt = llt
        self.grammar = grammar            # what a remote engine replica rebuilds this row from (serve/cluster/)
        self._ll_tok = _ll_tokenizer(tokenizer, n_vocab)
        self.matcher = llguidance.LLMatcher(self._ll_tok, grammar.source)
        self.bitmask = llt.allocate_token_bitmask(1, n_vocab)
        self._n_vocab = n_vocab
        self._lex = (False, False)                 # _in_string state after the tokens so far
        self._after: dict[int, list[int]] = {}     # this step's checked tokens -> their closing paths
        self._steer: bool | None = None            # set by the first choose(): does the budget allow it?
        # a closing path from here (None: not known, e.g. after an advance() that choose() did not give)
        self._path: list[int] | None = self._closing(self.matcher.deep_copy(), self._lex, MAX_CLOSING)
        self.min_tokens = None if self._path is None else len(self._path)   # None: no closing path found

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [vocab] -> the same tensor with forbidden tokens at -inf (in place)."""
        self._llt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        return apply_bitmask_(logits, self.bitmask[0])

    def choose(self, logits: torch.Tensor, pick: Callable[[torch.Tensor], int], left: int) -> int:
        """The next token of a row with `left` tokens of budget, this one included. logits: [vocab],
        masked in place; `pick` is the request's sampler (argmax, or a draw). A drawn token stays if a
        closing path after it fits in left - 1 tokens; otherwise it is masked out and `pick` draws
        again, so a sampled row keeps the model's distribution over the tokens that fit. After
        REDRAWS draws the row takes its closing path's next token. If the first call's budget is
        below min_tokens the row is not steered at all."""
        self.mask(logits)
        self._after = {}
        if self._steer is None:
            self._steer = self.min_tokens is not None and self.min_tokens <= left
        if not self._steer:
            return pick(logits)
        path = self._path if self._path is not None else self._closing(self.matcher.deep_copy(), self._lex, left)
        if not path:                               # complete already, or no path within the budget
            return pick(logits)
        allowed = None
        for _ in range(REDRAWS):
            token = pick(logits)
            after = path[1:] if token == path[0] else self._closing_after(token, left - 1)
            if after is not None:
                self._after[token] = after
                return token
            logits[token] = float("-inf")
            allowed = (int(torch.isfinite(logits).sum()) if allowed is None else allowed - 1)
            if allowed == 0:
                break
        self._after[path[0]] = path[1:]
        return path[0]

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise RuntimeError(f"grammar rejected token {token_id}: {self.matcher.get_error()}")
        self._lex = _in_string(self._lex, self._ll_tok.decode_bytes([token_id]))
        self._path = self._after.get(token_id)
        self._after = {}

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()

    def _closing_after(self, token: int, limit: int) -> list[int] | None:
        matcher = self.matcher.deep_copy()
        if not matcher.consume_token(token):
            return None
        return self._closing(matcher, _in_string(self._lex, self._ll_tok.decode_bytes([token])), limit)

    def _closing(self, matcher, lex: tuple[bool, bool], limit: int) -> list[int] | None:
        """A closing path from `matcher`'s state (consumed as it goes: pass a copy), or None if it
        would take more than `limit` tokens. Found a character (or forced run) at a time, then
        re-tokenised as the tokenizer would write it when the grammar accepts that (fewer tokens)."""
        in_string, outside = _closing_alphabets(self._ll_tok)
        start = matcher.deep_copy()
        path: list[int] = []
        while not matcher.is_stopped() and not matcher.is_accepting():
            if len(path) >= min(MAX_CLOSING, 8 * limit + 16):   # re-tokenising never saves 8x
                return None
            step = matcher.compute_ff_tokens()
            if not step:
                order = in_string if lex[0] else outside
                token = next((t for t in order if matcher.validate_tokens([t]) == 1), None)
                step = [token if token is not None else self._any_token(matcher)]
                if step[0] is None:
                    return None
            for t in step:
                if not matcher.consume_token(t):
                    return None
                lex = _in_string(lex, self._ll_tok.decode_bytes([t]))
            path += step
        retok = self._ll_tok.tokenize_bytes(self._ll_tok.decode_bytes(path)) if path else []
        if len(retok) < len(path) and start.validate_tokens(retok) == len(retok):
            path = retok
        if not matcher.is_stopped():               # complete but open-ended: EOS ends it
            path.append(self._ll_tok.eos_token)
        return path if len(path) <= limit else None

    def _any_token(self, matcher) -> int | None:
        """The lowest token the grammar allows here other than EOS (non-ASCII content, say)."""
        bitmask = self._llt.allocate_token_bitmask(1, self._n_vocab)
        self._llt.fill_next_token_bitmask(matcher, bitmask, 0)
        allowed = ((bitmask[0].view(-1, 1) >> _SHIFTS) & 1).view(-1).nonzero().flatten().tolist()
        return next((t for t in allowed if t != self._ll_tok.eos_token), None)


def dumps_schema(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True)
