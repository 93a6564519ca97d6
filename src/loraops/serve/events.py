"""What the engine sends a request's sink, in order: TokenEvent*, then one DoneEvent or ErrorEvent.
Sinks are called from the engine thread (and from API threads for requests refused or dropped
while they wait) and must not block."""

from __future__ import annotations

from dataclasses import dataclass

from loraops.serve.errors import ServeError


@dataclass(frozen=True)
class TokenEvent:
    text: str                     # text now safe to emit (may be "": a partial character, a stop prefix)
    token_id: int


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str            # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ErrorEvent:
    error: ServeError             # its .status / .code give the HTTP answer
