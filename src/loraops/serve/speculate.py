"""Prompt-lookup (n-gram) speculative decoding: draft tokens from the sequence's own text.

A decoding sequence often repeats text it has already seen: an extraction copies names and
numbers from its prompt, JSON repeats keys, small models loop. So the engine guesses the next
few tokens by finding the latest earlier occurrence of the sequence's last n tokens (the longest
n in [min_ngram, max_ngram] that occurred before) and proposing the tokens that followed it —
no draft model, no extra weights (vLLM's "ngram" speculator, transformers' prompt lookup).

The engine then feeds [last token, draft...] to the model in one step and keeps the longest
prefix of the draft that the model itself would have produced (greedy verification: exactly the
tokens plain decoding gives, see Engine.step). A wrong guess costs compute, not correctness;
`DraftLength` adapts each sequence's draft length to how well its guesses have been doing.

`NgramDrafter` keeps, per n, a dict from each n-gram to the position where it last ended, updated
as tokens arrive: a lookup is O(max_ngram) per token whatever the sequence's length.
`propose_reference` is the plain definition (a backward scan); tests compare the two.
"""

from __future__ import annotations


def propose_reference(tokens: list[int], k: int, max_ngram: int = 3, min_ngram: int = 2) -> list[int]:
    """The plain definition: for n from max_ngram down to min_ngram, the latest i < len - n with
    tokens[i:i+n] == tokens[-n:]; propose tokens[i+n : i+n+k] (possibly fewer than k). [] if none."""
    for n in range(max_ngram, min_ngram - 1, -1):
        if len(tokens) <= n:
            continue
        tail = tokens[-n:]
        for i in range(len(tokens) - n - 1, -1, -1):
            if tokens[i:i + n] == tail:
                return tokens[i + n:i + n + k]
    return []


class NgramDrafter:
    """One sequence's text so far (prompt + output) and its n-gram index."""

    def __init__(self, tokens: list[int], max_ngram: int = 3, min_ngram: int = 2):
        assert 1 <= min_ngram <= max_ngram
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self._last_end: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]
        self._match: list[int | None] = [None] * (max_ngram + 1)   # per n: where the tail n-gram ended before
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            self.tokens.append(t)
            end = len(self.tokens) - 1
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end + 1 < n:
                    self._match[n] = None
                    continue
                gram = tuple(self.tokens[end + 1 - n:])
                self._match[n] = self._last_end[n].get(gram)        # the occurrence before this one
                self._last_end[n][gram] = end

    def propose(self, k: int) -> list[int]:
        """Up to k draft tokens ([] when no n-gram of the tail occurred before)."""
        if k <= 0:
            return []
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            end = self._match[n]
            if end is not None:
                return self.tokens[end + 1:end + 1 + k]
        return []


class DraftLength:
    """A sequence's draft length for its next step. Back to the full `max_draft` after a fully
    accepted draft; one more than the accepted count after a partial one; and after a draft of
    which nothing was accepted, no draft for 1, 2, 4, ... up to MAX_PAUSE steps (doubling while
    guesses keep failing). A wrong draft token costs a step as much as a real one once the batch
    is compute-bound, so a sequence whose text does not repeat itself soon stops paying for it."""

    MAX_PAUSE = 16

    def __init__(self, max_draft: int):
        self.max_draft = self.k = max_draft
        self.pause = 0             # steps left without a draft
        self._next_pause = 1

    def next(self) -> int:
        """Draft tokens to propose this step (counts down a pause)."""
        if self.pause:
            self.pause -= 1
            return 0
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        self.k = self.max_draft if accepted == drafted else max(1, accepted + 1)
        if accepted:
            self._next_pause = 1
        else:
            self.pause, self._next_pause = self._next_pause, min(2 * self._next_pause, self.MAX_PAUSE)


def share_budget(wants: list[int], budget: int) -> list[int]:
    """Split a step's `budget` of draft tokens among sequences that could use `wants[i]` each, one
    token per sequence per round (water-filling): every sequence's first guess — the likeliest to
    be accepted, since guess i + 1 counts only if guess i did — comes before anyone's later ones.
    Earlier sequences get the remainder of a round. -> tokens per sequence."""
    give = [0] * len(wants)
    for level in range(1, max(wants, default=0) + 1):
        for i, want in enumerate(wants):
            if budget <= 0:
                return give
            if want >= level:
                give[i] += 1
                budget -= 1
    return give
