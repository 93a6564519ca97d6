"""Requests in flight (Sequence), the waiting queue fair across tenants (FairQueue), and the
Scheduler that turns them into one step's Batch.

The queue keeps one FIFO per tenant and `pick` serves tenants round-robin: the tenant served last
goes to the back, so a tenant with a thousand queued requests and a tenant with one alternate.
It is bounded, and its room is shared fairly (`FairQueue.push`): a tenant may always queue up to
its share — the bound divided by the number of tenants with requests waiting — so one tenant
flooding the server gets 503s while every other tenant is still admitted.

Each step, `Scheduler.schedule` applies finished adapter loads, drops cancelled sequences, admits
waiting ones (KV blocks reserved for their whole budget, their adapters' slots pinned) and picks
each decoding sequence's speculative draft within the step's token budget.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from loraops.serve.config import EngineConfig
from loraops.serve.errors import OverloadedError, ServeError
from loraops.serve.events import ErrorEvent
from loraops.serve.model_ref import ModelRef
from loraops.serve.sampling import SamplingParams, TextStream
from loraops.serve.speculate import DraftLength, NgramDrafter, share_budget


@dataclass(eq=False)
class Sequence:
    """One request from submission to its last token. `terms` are the (slot-pool key, weight) of
    its adapters — none for the base alone, one (weight 1) for an adapter, 2-4 for a composition —
    resolved when it is admitted, and `slots` their pinned slots while it runs. `sink` receives its
    events (events.py) and must not block."""

    id: int
    tenant: str
    model: ModelRef
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[object], None]
    stream: TextStream | None
    generator: torch.Generator | None = None
    constraint: object | None = None          # grammar.RowConstraint for response_format
    terms: list[tuple[str, float]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    computed: int = 0                         # tokens whose keys/values are in the cache
    output: list[int] = field(default_factory=list)
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    cancelled: bool = False
    finished: bool = False
    counted_lookup: bool = False
    drafter: NgramDrafter | None = None       # greedy requests, speculation on
    draft_len: DraftLength | None = None

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.terms]

    @property
    def slot(self) -> int:
        """The first term's slot (0: none), for single-adapter callers."""
        return self.slots[0] if self.slots else 0

    @property
    def budget(self) -> int:
        """KV tokens this sequence may need: the prompt plus every token it may generate."""
        return len(self.prompt) + self.params.max_tokens

    @property
    def wants_logits(self) -> bool:
        """Its next tokens need the logits rows (it samples, follows a grammar, asked for logprobs,
        penalties or a logit bias); else only the argmax, which the head may screen."""
        return not self.params.greedy or self.constraint is not None or self.params.needs_logits


class FairQueue:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self._by_tenant: OrderedDict[str, deque[Sequence]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, seq: Sequence) -> Sequence | None:
        """Queue `seq`. When the queue is full, a tenant below its share (max_size // tenants
        waiting, at least 1) takes the place of the newest request of the tenant holding the most,
        which is returned (it must be refused); a tenant at or above its share is refused.
        Raises OverloadedError."""
        mine = self._by_tenant.get(seq.tenant)
        held = len(mine) if mine else 0
        victim = None
        if self._size >= self.max_size:
            share = max(1, self.max_size // (len(self._by_tenant) + (mine is None)))
            longest = max(self._by_tenant.values(), key=len, default=deque())
            if held >= share or len(longest) <= share:
                raise OverloadedError(f"the server's queue is full ({self.max_size} waiting requests, of which "
                                      f"this tenant holds {held}); retry later")
            victim = longest.pop()
            self._size -= 1
        self._by_tenant.setdefault(seq.tenant, deque()).append(seq)
        self._size += 1
        return victim

    def waiting(self) -> list[Sequence]:
        return [s for q in self._by_tenant.values() for s in q]

    def pick(self, ready: Callable[[Sequence], bool]) -> Sequence | None:
        """The first ready sequence of the first tenant (in round-robin order) that has one."""
        for tenant, q in list(self._by_tenant.items()):
            for seq in q:
                if ready(seq):
                    q.remove(seq)
                    self._size -= 1
                    del self._by_tenant[tenant]
                    if q:
                        self._by_tenant[tenant] = q       # served: to the back of the line
                    return seq
        return None

    def remove(self, seq: Sequence) -> bool:
        q = self._by_tenant.get(seq.tenant)
        if q is None or seq not in q:
            return False
        q.remove(seq)
        self._size -= 1
        if not q:
            del self._by_tenant[seq.tenant]
        return True


@dataclass
class Batch:
    """One step's work: per sequence, the tokens it feeds (its prompt when it just joined, else its
    last token) and its speculative draft (fed after them, verified by the same forward)."""

    seqs: list[Sequence]
    new: list[list[int]]
    drafts: list[list[int]]

    def __len__(self) -> int:
        return len(self.seqs)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, in order (their outputs concatenate to this batch's)."""
        m = len(self.seqs) // 2
        return (Batch(self.seqs[:m], self.new[:m], self.drafts[:m]),
                Batch(self.seqs[m:], self.new[m:], self.drafts[m:]))


class Scheduler:
    """Waiting and running sequences. `add`, `cancel` and `fail_waiting` may be called from any
    thread; `schedule` and `finish` only from the engine thread, which alone touches `running`,
    the KV cache and the slot pool."""

    def __init__(self, config: EngineConfig, cache, pool, catalog):
        """cache: kv.BlockKVCache, pool: slots.SlotPool, catalog: catalog.AdapterCatalog."""
        self.config, self.cache, self.pool, self.catalog = config, cache, pool, catalog
        self.waiting = FairQueue(config.max_queue)
        self.running: list[Sequence] = []
        self._lock = threading.Lock()

    # ---- any thread --------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        """Queue `seq` (raises OverloadedError); a request it displaces gets a 503 event."""
        with self._lock:
            victim = self.waiting.push(seq)
        if victim is not None:
            victim.sink(ErrorEvent(OverloadedError("the server's queue is full and this tenant holds more than "
                                                   "its share of it; retry later")))

    def cancel(self, seq: Sequence) -> None:
        with self._lock:
            seq.cancelled = True
            self.waiting.remove(seq)

    def fail_waiting(self, which: Callable[[Sequence], bool], error: ServeError) -> None:
        with self._lock:
            failed = [s for s in self.waiting.waiting() if which(s)]
            for seq in failed:
                self.waiting.remove(seq)
        for seq in failed:
            seq.sink(ErrorEvent(error))

    # ---- engine thread -----------------------------------------------------------------------

    def schedule(self) -> Batch | None:
        """This step's batch: every running sequence, after admitting what fits. None if idle."""
        for failed in self.catalog.apply():
            self.fail_waiting(lambda s: failed.key in self.catalog.keys_of(s.model), failed.error)
        for seq in [s for s in self.running if s.cancelled]:
            self.finish(seq)
        self._admit()
        if not self.running:
            return None
        seqs = list(self.running)
        return Batch(seqs, [s.prompt if s.computed == 0 else s.output[-1:] for s in seqs], self._drafts(seqs))

    def finish(self, seq: Sequence) -> None:
        """Take `seq` out of the batch: free its KV blocks and unpin its slots."""
        if seq.finished:
            return
        seq.finished = True
        if seq in self.running:
            self.running.remove(seq)
            self.cache.release(seq.id)
            for slot in seq.slots:
                self.pool.unpin(slot)

    def idle(self) -> bool:
        return not self.running and not len(self.waiting) and not self.catalog.pending()

    def _admit(self) -> None:
        budget = self.config.max_prefill_tokens
        refused: list[tuple[Sequence, ServeError]] = []
        with self._lock:
            while len(self.running) < self.config.max_batch:
                found: dict[int, list | ServeError] = {}
                seq = self.waiting.pick(lambda s: self._ready(s, budget, found))
                if seq is None:
                    break
                terms = found[seq.id]
                if isinstance(terms, ServeError):         # its adapter was removed after it was queued
                    refused.append((seq, terms))
                    continue
                budget -= len(seq.prompt)
                assert self.cache.reserve(seq.id, seq.budget)
                seq.terms = terms
                seq.slots = [self.pool.acquire(k) for k, _ in terms]
                if self.config.speculate > 0 and seq.params.greedy:
                    seq.drafter = NgramDrafter(seq.prompt)
                    seq.draft_len = DraftLength(self.config.speculate)
                self.running.append(seq)
        for seq, error in refused:
            seq.sink(ErrorEvent(error))

    def _ready(self, seq: Sequence, budget: int, found: dict) -> bool:
        """Can `seq` start now? Records its terms (or why it never can) in found[seq.id]."""
        try:
            terms = self.catalog.resolve(seq.model)
        except ServeError as e:
            found[seq.id] = e
            return True
        # A prompt longer than the whole per-step budget may still go, alone in its step.
        over_budget = len(seq.prompt) > budget and budget < self.config.max_prefill_tokens
        if seq.cancelled or over_budget or not self.cache.can_reserve(seq.budget):
            return False
        # Every part of a composition must be resident at once; each missing one loads off this thread.
        ready = True
        for key, _ in terms:
            slot = self.pool.lookup(key) if not seq.counted_lookup else self.pool.resident().get(key)
            if slot is None:
                self.catalog.request(key)
            ready = ready and slot is not None
        seq.counted_lookup = True                          # a hit or a miss once per request and part
        found[seq.id] = terms
        return ready

    def _drafts(self, seqs: list[Sequence]) -> list[list[int]]:
        """Each decoding sequence's speculative draft (see speculate.py): up to its DraftLength,
        within its remaining max_tokens, and within the step's token budget, shared so that every
        sequence's first guesses come before anyone's later ones (`share_budget`)."""
        drafts: list[list[int]] = [[] for _ in seqs]
        budget = self.config.speculate_step_tokens - sum(len(s.prompt) if s.computed == 0 else 1 for s in seqs)
        if budget <= 0:                                    # no room: paused sequences keep their pause
            return drafts
        guesses = {i: s.drafter.propose(min(s.draft_len.next(), s.params.max_tokens - len(s.output) - 1))
                   for i, s in enumerate(seqs) if s.drafter is not None and s.computed > 0}
        give = share_budget([len(g) for g in guesses.values()], budget)
        for (i, guess), k in zip(guesses.items(), give):
            drafts[i] = guess[:k]
        return drafts
