"""Next-token sampling (greedy, temperature, top-k, top-p, per-request seed), the logit processors
(logit_bias, repetition / frequency / presence penalties), log-probabilities, and stop strings.

Plain semantics of `sample`: temperature 0 is argmax; otherwise logits / temperature, keep the
top_k largest (0 = all), keep the smallest set of tokens whose probability mass reaches top_p,
renormalise and draw one token with the request's own generator (so a seed reproduces a request
whatever else shares its batch).

Order, as vLLM's sampler: raw logits -> `process_logits` (logit_bias, then the penalties) -> the
grammar mask (postprocess.py) -> `sample`. Log-probabilities (`top_logprobs`) are of the raw
model distribution, log_softmax of the logits before any of that, in fp32 (vLLM's default
`raw_logprobs`): what the model thinks of the token, whatever the sampler then did with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch

from loraops.serve.events import TokenLogprob


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    logprobs: int | None = None          # top log-probs per generated token (0: only the token's); None: none
    prompt_logprobs: int | None = None   # the same for the prompt's tokens (echo); None: none
    logit_bias: tuple[tuple[int, float], ...] = ()    # (token id, bias added to its logit)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0      # extension (HF / CTRL); 1: off
    ignore_eos: bool = False      # generate max_tokens whatever the model emits (benchmarks; vLLM's name)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def processes_logits(self) -> bool:
        """Its logits change before sampling (bias or penalties): `process_logits` has work to do."""
        return bool(self.logit_bias) or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 \
            or self.repetition_penalty != 1.0

    @property
    def needs_logits(self) -> bool:
        """Even a greedy row needs its full logits row, not only its argmax."""
        return self.logprobs is not None or self.processes_logits


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """The parameters of choice `index` of a request asking for several (`n`, `best_of`): choice 0 is
    the request itself; choice i > 0 gets a seed derived from (seed, i), so a seeded request
    reproduces every one of its choices, and no prompt log-probs (the first choice has them)."""
    if index == 0:
        return params
    seed = None if params.seed is None else int.from_bytes(
        hashlib.sha256(f"{params.seed}:{index}".encode()).digest()[:8], "big", signed=True)
    return replace(params, seed=seed, prompt_logprobs=None)


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


def process_logits(logits: torch.Tensor, params: SamplingParams, prompt: list[int], output: list[int]) -> torch.Tensor:
    """logits: [V] -> a new fp32 [V] with, in order: logit_bias added; the repetition penalty r on
    every token of prompt + output (a logit l becomes l / r if l > 0, else l · r); and OpenAI's
    penalties on the tokens generated so far, l -= c · frequency_penalty + (c > 0) · presence_penalty,
    c = the token's count in `output`."""
    out = logits.float().clone()
    vocab = out.shape[-1]
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias)
        out[list(ids)] += torch.tensor(bias)
    if params.repetition_penalty != 1.0 and (prompt or output):
        seen = torch.tensor(sorted(set(prompt) | set(output)))
        picked = out[seen]
        out[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and output:
        counts = torch.bincount(torch.tensor(output), minlength=vocab)[:vocab].float()
        out -= counts * params.frequency_penalty + (counts > 0).float() * params.presence_penalty
    return out


def logprobs_of(logits: torch.Tensor) -> torch.Tensor:
    """logits: [V] -> [V] fp32 log-probabilities (the raw model distribution)."""
    return torch.log_softmax(logits.float(), dim=-1)


def token_logprob(logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """logprobs: [V] -> `token`'s log-prob and the k most likely tokens (most likely first)."""
    top = logprobs.topk(k) if k else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist())) if top is not None else ()
    return TokenLogprob(token, float(logprobs[token]), pairs)


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
