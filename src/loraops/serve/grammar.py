"""Constrained decoding for `response_format` (json_object / json_schema), one matcher per row.

Library choice, measured on this CPU with Gemma 3's 262k vocabulary (bench/grammar.py,
docs/benchmarks.md): computing the next-token mask costs llguidance ~0.1 ms and xgrammar ~0.03 ms,
both far below a ~110 ms decode step; xgrammar pulls in triton (~1 GB) on Linux, so we use
llguidance. Its one-time tokenizer conversion (~7 s for Gemma) happens once per server; each
schema then compiles in milliseconds. Applying the mask is ours (`apply_bitmask_`).

Per row: mask(logits) sets every token the grammar forbids to -inf; advance(token) moves the
matcher on. A row finishes when its matcher has stopped (the JSON is complete) or EOS is drawn.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
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


def compile_grammar(schema: dict) -> Grammar:
    """Validate `schema` (size, JSON Schema meta-schema, then llguidance) and compile it."""
    import jsonschema
    import llguidance

    check_schema_size(schema)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidResponseFormatError(f"invalid JSON schema: {e.message}") from e
    except RecursionError:
        raise InvalidResponseFormatError("the JSON schema nests too deeply") from None
    try:
        source = llguidance.LLMatcher.grammar_from_json_schema(schema)
    except (ValueError, TypeError, RuntimeError) as e:    # what llguidance raises for schemas it cannot take
        raise InvalidResponseFormatError(f"unsupported JSON schema: {e}") from e
    ok, error = _validate(source)
    if not ok:
        raise InvalidResponseFormatError(f"unsupported JSON schema: {error}")
    return Grammar(source, schema)


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
        key = hashlib.sha256(dumps_schema(schema).encode()).hexdigest()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        if hit is None:
            try:
                hit = compile_grammar(schema)
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


class RowConstraint:
    """The grammar state of one generating row."""

    def __init__(self, grammar: Grammar, tokenizer, n_vocab: int):
        import llguidance
        import llguidance.torch as llt

        self._llt = llt
        self.grammar = grammar            # what a remote engine replica rebuilds this row from (serve/cluster/)
        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, n_vocab), grammar.source)
        self.bitmask = llt.allocate_token_bitmask(1, n_vocab)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [vocab] -> the same tensor with forbidden tokens at -inf (in place)."""
        self._llt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        return apply_bitmask_(logits, self.bitmask[0])

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise RuntimeError(f"grammar rejected token {token_id}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()


def dumps_schema(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True)
