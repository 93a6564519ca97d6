"""Next-token sampling (greedy, temperature, top-k, top-p, per-request seed) and stop strings.

Plain semantics of `sample`: temperature 0 is argmax; otherwise logits / temperature, keep the
top_k largest (0 = all), keep the smallest set of tokens whose probability mass reaches top_p,
renormalise and draw one token with the request's own generator (so a seed reproduces a request
whatever else shares its batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False      # generate max_tokens whatever the model emits (benchmarks; vLLM's name)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if params.greedy:
        return None
    g = torch.Generator()
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed(params.seed)
    return g


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits: [V] -> [V] with excluded tokens at -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs             # mass strictly before each token
        drop = before >= top_p                                   # the first token is always kept
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """logits: [V] -> one token id."""
    if params.greedy:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """Incremental detokenisation with stop strings.

    push(token) returns the text that is now safe to emit: text that cannot be the start of a stop
    string and does not end in a partial UTF-8 character. When a stop string appears, the text
    before it is final and `stopped` becomes True; the stop string itself is never emitted.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False
        self.text = ""

    def push(self, token_id: int | None) -> str:
        if token_id is not None:
            self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            at = text.find(s)
            if at != -1 and (not self.stopped or at < len(self.text)):
                text, self.stopped = text[:at], True
        self.text = text
        safe = len(text)
        if not self.stopped:
            if text.endswith("\ufffd"):
                safe = len(text.rstrip("\ufffd"))
            for s in self.stop:                                   # hold back a possible stop prefix
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
        safe = max(safe, self.emitted)
        delta, self.emitted = text[self.emitted:safe], safe
        return delta

    def flush(self) -> str:
        """At the end: everything not yet emitted (minus a stop string)."""
        delta, self.emitted = self.text[self.emitted:], len(self.text)
        return delta
