"""After a forward: verify each sequence's draft, emit its tokens, finish what is done.

Token i of a sequence comes from its kept row i exactly as plain decoding would choose it (the
greedy token, or a sample from the row's logits after its grammar mask); the step goes on to row
i + 1 only while token i equals draft token i (so row i + 1 saw the right input) and the sequence
has not finished. A sequence whose rows failed (StepOutput.errors), or whose sampling raises,
fails alone with its error event.
"""

from __future__ import annotations

import logging
import time

import torch

from loraops.serve.errors import InternalError, ServeError
from loraops.serve.events import DoneEvent, ErrorEvent, TokenEvent
from loraops.serve.runner import StepOutput
from loraops.serve.sampling import sample
from loraops.serve.scheduler import Batch, Scheduler, Sequence

log = logging.getLogger("loraops.serve")


class Postprocessor:
    def __init__(self, scheduler: Scheduler, eos_ids: set[int], metrics=None):
        self.scheduler, self.eos_ids, self.metrics = scheduler, eos_ids, metrics
        self.spec_stats = [0, 0]                          # speculative tokens drafted, accepted

    def __call__(self, batch: Batch, out: StepOutput) -> None:
        for seq, new, draft, tokens, logits, error in zip(batch.seqs, batch.new, batch.drafts, out.tokens,
                                                          out.logits, out.errors):
            if error is not None:
                self.fail(seq, error)
                continue
            seq.computed += len(new)
            try:
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
        for i in range(len(draft) + 1):
            if tokens is not None:
                token = tokens[i]
            else:
                row = logits[i]
                if seq.constraint is not None:
                    seq.constraint.mask(row)               # forbidden tokens -> -inf, in place
                token = sample(row, seq.params, seq.generator)
            self.emit(seq, token)
            if i == len(draft) or token != draft[i] or seq.finished:
                return i
        return len(draft)

    def emit(self, seq: Sequence, token: int) -> None:
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
        seq.sink(TokenEvent(text, token))
        if finish is not None:
            if self.metrics is not None and len(seq.output) > 1:
                self.metrics.tpot.labels(seq.model.label, seq.tenant).observe(
                    (now - seq.first_token_at) / (len(seq.output) - 1))
            seq.sink(DoneEvent(finish, len(seq.prompt), len(seq.output)))
            self.scheduler.finish(seq)
