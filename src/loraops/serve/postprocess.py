"""After a forward: verify each sequence's draft, emit its tokens, finish what is done.

Token i of a sequence comes from its kept row i exactly as plain decoding would choose it (the
greedy token, or a sample from the row's logits after its logit bias, penalties and grammar mask);
the step goes on to row i + 1 only while token i equals draft token i (so row i + 1 saw the right
input) and the sequence has not finished. Speculation stays on for greedy rows with penalties,
a logit bias or logprobs: row i's penalties count the tokens emitted before it in this step, which
equal the draft's, so every row is processed exactly as plain decoding would process it. A
sequence whose rows failed (StepOutput.errors), or whose sampling raises, fails alone with its
error event.
"""

from __future__ import annotations

import logging
import time

import torch

from loraops.serve.errors import InternalError, ServeError
from loraops.serve.events import DoneEvent, ErrorEvent, PromptLogprobsEvent, TokenEvent, TokenLogprob
from loraops.serve.head import Scores
from loraops.serve.runner import StepOutput
from loraops.serve.sampling import logprobs_of, process_logits, sample, token_logprob
from loraops.serve.scheduler import Batch, Scheduler, Sequence

log = logging.getLogger("loraops.serve")


class Postprocessor:
    def __init__(self, scheduler: Scheduler, eos_ids: set[int], metrics=None):
        self.scheduler, self.eos_ids, self.metrics = scheduler, eos_ids, metrics
        self.spec_stats = [0, 0]                          # speculative tokens drafted, accepted

    def __call__(self, batch: Batch, out: StepOutput) -> None:
        for seq, new, draft, tokens, logits, error, scores in zip(batch.seqs, batch.new, batch.drafts, out.tokens,
                                                                  out.logits, out.errors, out.prompt):
            if error is not None:
                self.fail(seq, error)
                continue
            prefill = seq.computed == 0
            seq.computed += len(new)
            try:
                if prefill and seq.params.prompt_logprobs is not None:
                    seq.sink(PromptLogprobsEvent(prompt_entries(seq.prompt, scores, seq.params.prompt_logprobs)))
                if seq.params.max_tokens == 0:             # scoring only (echo): nothing to generate
                    self._done(seq, "length", time.monotonic())
                    continue
                accepted = self._verify(seq, draft, tokens, logits)
            except Exception:                              # one request's failure is not the batch's
                log.exception("request %d failed while sampling", seq.id)
                self.fail(seq, InternalError("internal error while generating"))
                continue
            seq.computed += accepted
            if draft:
                seq.draft_len.update(len(draft), accepted)
                self.spec_stats[0] += len(draft)
                self.spec_stats[1] += accepted

    def fail(self, seq: Sequence, error: ServeError) -> None:
        seq.sink(ErrorEvent(error))
        self.scheduler.finish(seq)

    def _verify(self, seq: Sequence, draft: list[int], tokens: list[int] | None,
                logits: torch.Tensor | None) -> int:
        """tokens: the greedy token of each of its len(draft) + 1 rows, or logits: [len(draft) + 1, V].
        Returns how many draft tokens were accepted (their keys/values are valid in the cache)."""
        params, logprob = seq.params, None
        for i in range(len(draft) + 1):
            if tokens is not None:
                token = tokens[i]
            else:
                row = logits[i]
                raw = logprobs_of(row) if params.logprobs is not None else None   # before anything changes row
                if params.processes_logits:
                    row = process_logits(row, params, seq.prompt, seq.output)
                if seq.constraint is None:
                    token = sample(row, params, seq.generator)
                else:                                      # masked, and closes within max_tokens
                    token = seq.constraint.choose(row, lambda x: sample(x, params, seq.generator),
                                                  params.max_tokens - len(seq.output))
                logprob = token_logprob(raw, token, params.logprobs) if raw is not None else None
            self.emit(seq, token, logprob)
            if i == len(draft) or token != draft[i] or seq.finished:
                return i
        return len(draft)

    def emit(self, seq: Sequence, token: int, logprob: TokenLogprob | None = None) -> None:
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
            if self.metrics is not None:
                self.metrics.ttft.labels(seq.model.label, seq.tenant).observe(now - seq.arrived)
        seq.output.append(token)
        if seq.drafter is not None:
            seq.drafter.extend([token])
        finish = None
        if token in self.eos_ids and not seq.params.ignore_eos:
            text, finish = seq.stream.flush(), "stop"
        else:
            text = seq.stream.push(token)
            if seq.constraint is not None:
                seq.constraint.advance(token)
            if seq.stream.stopped or (seq.constraint is not None and seq.constraint.done):
                text, finish = text + seq.stream.flush(), "stop"
            elif len(seq.output) >= seq.params.max_tokens:
                text, finish = text + seq.stream.flush(), "length"
        seq.sink(TokenEvent(text, token, logprob))
        if finish is not None:
            self._done(seq, finish, now)

    def _done(self, seq: Sequence, finish: str, now: float) -> None:
        if self.metrics is not None and len(seq.output) > 1:
            self.metrics.tpot.labels(seq.model.label, seq.tenant).observe(
                (now - seq.first_token_at) / (len(seq.output) - 1))
        seq.sink(DoneEvent(finish, len(seq.prompt), len(seq.output)))
        self.scheduler.finish(seq)


def prompt_entries(prompt: list[int], scores: Scores | None, k: int) -> tuple[TokenLogprob | None, ...]:
    """Per prompt token its log-prob given the tokens before it (the first has none), with the k
    most likely tokens at that position; scores: rows 0..P-2 (row j predicts token j + 1)."""
    if scores is None:
        return (None,) * len(prompt)
    lps, ids, tops = scores.logprobs.tolist(), scores.top_ids[:, :k].tolist(), scores.top_logprobs[:, :k].tolist()
    return (None, *(TokenLogprob(t, lp, tuple(zip(i, v))) for t, lp, i, v in zip(prompt[1:], lps, ids, tops)))
