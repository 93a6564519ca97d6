"""Requests in flight (Sequence) and the waiting queue, fair across tenants.

The queue is bounded (a full queue is a 503 upstream) and keeps one FIFO per tenant. `pick`
serves tenants round-robin: the tenant served last goes to the back, so a tenant with a thousand
queued requests and a tenant with one alternate — one tenant cannot starve another.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from loraops.serve.errors import OverloadedError
from loraops.serve.sampling import SamplingParams, TextStream


@dataclass
class Sequence:
    """One request from admission to its last token. `terms` are (slot-pool key, weight) of its
    adapters: none for the base alone, one (weight 1) for an adapter, 2-4 for a composition.
    `slots` holds their pinned slots while it runs; `sink` receives events (engine thread) and
    must not block."""

    id: int
    tenant: str
    model: str
    terms: list[tuple[str, float]]
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[object], None]
    stream: TextStream
    generator: torch.Generator | None = None
    slots: list[int] = field(default_factory=list)
    computed: int = 0                         # tokens whose keys/values are in the cache
    output: list[int] = field(default_factory=list)
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    cancelled: bool = False
    counted_lookup: bool = False
    constraint: object | None = None          # grammar.RowConstraint for response_format
    drafter: object | None = None             # speculate.NgramDrafter (greedy requests, speculation on)
    draft_len: object | None = None           # speculate.DraftLength

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


class FairQueue:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self._by_tenant: OrderedDict[str, deque[Sequence]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, seq: Sequence) -> None:
        if self._size >= self.max_size:
            raise OverloadedError(f"the server's queue is full ({self.max_size} waiting requests); retry later")
        self._by_tenant.setdefault(seq.tenant, deque()).append(seq)
        self._size += 1

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
