"""Per-tenant rate limits: token buckets for requests/min and tokens/min, and a concurrency cap.

A request is charged its prompt tokens plus max_tokens up front (so a burst cannot overrun the
budget) and refunded the tokens it did not generate when it finishes. Every check is made before
anything is taken, so a refused request costs nothing. Refusals carry the wait in seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from loraops.serve.errors import RateLimitError
from loraops.serve.tenancy import Tenant


class TokenBucket:
    """Holds up to `per_minute` tokens, refilled continuously at per_minute / 60 per second."""

    def __init__(self, per_minute: float, clock=time.monotonic):
        self.capacity, self.rate, self.clock = float(per_minute), per_minute / 60.0, clock
        self.tokens, self.stamp = self.capacity, clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, n: float) -> float:
        """Seconds until `n` tokens are available (0: now). n is clamped to the capacity."""
        self._refill()
        n = min(n, self.capacity)
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate

    def take(self, n: float) -> None:
        self.tokens -= min(n, self.capacity)

    def give(self, n: float) -> None:
        self._refill()
        self.tokens = min(self.capacity, self.tokens + n)


@dataclass
class _State:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    running: int = 0


class Lease:
    """One admitted request's hold on its tenant's limits; `release` exactly once."""

    def __init__(self, limiter: Limiter, state: _State, charged: int):
        self._limiter, self._state, self._charged, self._done = limiter, state, charged, False

    def release(self, used_tokens: int | None = None) -> None:
        with self._limiter._lock:
            if self._done:
                return
            self._done = True
            self._state.running -= 1
            if self._state.tokens is not None and used_tokens is not None:
                self._state.tokens.give(max(0, self._charged - used_tokens))


class Limiter:
    def __init__(self, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._states: dict[str, _State] = {}

    def _state(self, t: Tenant) -> _State:
        if t.name not in self._states:
            rl = t.rate_limit
            self._states[t.name] = _State(
                TokenBucket(rl.requests_per_minute, self._clock) if rl.requests_per_minute else None,
                TokenBucket(rl.tokens_per_minute, self._clock) if rl.tokens_per_minute else None)
        return self._states[t.name]

    def check(self, tenant: Tenant) -> None:
        """Raise RateLimitError now if a request of this tenant would be refused for its concurrency
        or request rate, taking nothing: lets the caller refuse before expensive work."""
        with self._lock:
            self._refusal(tenant, None)

    # The HTTP routes await these two, so that a limiter elsewhere (the cluster's shared one,
    # serve/cluster/shared.py) is asked without blocking the event loop.

    async def check_async(self, tenant: Tenant) -> None:
        self.check(tenant)

    async def acquire_async(self, tenant: Tenant, tokens: int) -> Lease:
        return self.acquire(tenant, tokens)

    def acquire(self, tenant: Tenant, tokens: int) -> Lease:
        """Admit one request needing up to `tokens` tokens, or raise RateLimitError (429)."""
        with self._lock:
            s = self._refusal(tenant, tokens)
            if s.requests is not None:
                s.requests.take(1)
            if s.tokens is not None:
                s.tokens.take(tokens)
            s.running += 1
            return Lease(self, s, tokens)

    def _refusal(self, tenant: Tenant, tokens: int | None) -> _State:
        """The tenant's state if a request (of `tokens`, unless None) fits now; else RateLimitError."""
        s, rl = self._state(tenant), tenant.rate_limit
        if rl.max_concurrent is not None and s.running >= rl.max_concurrent:
            raise RateLimitError(f"tenant {tenant.name!r} already has {s.running} requests in flight "
                                 f"(limit {rl.max_concurrent})", retry_after=1.0)
        if s.requests is not None and (wait := s.requests.wait_for(1)) > 0:
            raise RateLimitError(f"rate limit of {rl.requests_per_minute:g} requests per minute reached",
                                 retry_after=wait)
        if tokens is not None and s.tokens is not None and (wait := s.tokens.wait_for(tokens)) > 0:
            raise RateLimitError(f"rate limit of {rl.tokens_per_minute:g} tokens per minute reached",
                                 retry_after=wait)
        return s
