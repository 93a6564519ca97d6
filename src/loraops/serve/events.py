"""What the engine sends a request's sink, in order: a PromptLogprobsEvent (only when it asked for
the prompt's log-probs), TokenEvent*, then one DoneEvent or ErrorEvent. Sinks are called from the engine thread (and from API threads for requests refused or dropped
while they wait) and must not block."""

from __future__ import annotations

from dataclasses import dataclass

from loraops.serve.errors import ServeError


@dataclass(frozen=True)
class TokenLogprob:
    """One position's log-probabilities (fp32, the raw model distribution; sampling.py)."""

    token_id: int
    logprob: float                            # of token_id
    top: tuple[tuple[int, float], ...] = ()   # the k most likely (token id, logprob), most likely first


@dataclass(frozen=True)
class TokenEvent:
    text: str                     # text now safe to emit (may be "": a partial character, a stop prefix)
    token_id: int
    logprob: TokenLogprob | None = None       # when the request asked for logprobs


@dataclass(frozen=True)
class PromptLogprobsEvent:
    """Per prompt token, its log-probability given the tokens before it; the first is None."""

    entries: tuple[TokenLogprob | None, ...]


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str            # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ErrorEvent:
    error: ServeError             # its .status / .code give the HTTP answer
