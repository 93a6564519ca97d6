"""What every replica of `loraops serve --ray` must agree on, kept by one replica of its own
deployment (SharedState), and the ingress's client for its limits (RemoteLimiter).

Where the counters live, and why. A tenant's limits hold across engine replicas and ingress
replicas, so no replica may count alone. They live in one process that every ingress asks: the
single-process server's own Limiter, unchanged, inside a Ray Serve deployment of one replica. One
call (about a millisecond inside a node) per request admitted is exact — a burst split over any
number of ingress replicas is counted once, in order — and needs no second service. PostgreSQL
(the registry's database) would cost a transaction and a row lock per request on the hot path,
and a token bucket held there would still need a clock shared by every ingress. Tenants without
limits never ask it (RemoteLimiter), so only limited tenants pay the hop.

Failure. Serve health-checks and restarts this replica like any other. While it is down, limited
tenants get 503 (fail closed: a limit that cannot be checked is not waived). A restarted one starts
with full buckets (at most one more minute's budget per tenant) and no leases. An ingress that dies
takes the leases of its requests in flight with it: each lease expires after `lease_ttl_s`, so a
tenant's concurrency comes back at the latest then.

It also keeps the adapters loaded at run time through /admin/adapters (an engine replica that
starts or restarts registers them too, so every replica serves the same models) and the request
metrics each ingress replica reports, so that any of them can render /metrics for all.
"""

from __future__ import annotations

import itertools
import logging
import time

from loraops.serve.errors import OverloadedError, RateLimitError
from loraops.serve.limits import Lease, Limiter
from loraops.serve.tenancy import Tenant

log = logging.getLogger("loraops.serve")

LEASE_TTL_S = 900.0          # longer than any request can run: max_tokens is capped (--max-tokens-cap)
INGRESS_STALE_S = 15.0       # an ingress that has not reported for this long is gone


class SharedState:
    """The Ray Serve deployment body (one replica). Methods answer values, never raise, so that
    nothing depends on how Ray wraps an exception."""

    def __init__(self, lease_ttl_s: float = LEASE_TTL_S, clock=time.monotonic):
        self.limiter = Limiter(clock)
        self.lease_ttl_s, self.clock = lease_ttl_s, clock
        self._leases: dict[int, tuple[Lease, float]] = {}         # id -> (lease, expiry)
        self._ids = itertools.count(1)
        self._adapters: dict[str, tuple[str, bool]] = {}          # admin-loaded: name -> (path, force)
        self._ingress: dict[str, tuple[float, list]] = {}         # ingress id -> (reported at, families)

    # ---- limits ------------------------------------------------------------------------------

    def check(self, tenant: Tenant) -> tuple[str, float] | None:
        """None if a request of `tenant` fits its concurrency and request rate now; else (why, wait s)."""
        self._expire()
        try:
            self.limiter.check(tenant)
        except RateLimitError as e:
            return e.message, e.retry_after
        return None

    def acquire(self, tenant: Tenant, tokens: int) -> int | tuple[str, float]:
        """A lease id for one request of up to `tokens` tokens, or (why, wait s) if refused."""
        self._expire()
        try:
            lease = self.limiter.acquire(tenant, tokens)
        except RateLimitError as e:
            return e.message, e.retry_after
        lease_id = next(self._ids)
        self._leases[lease_id] = (lease, self.clock() + self.lease_ttl_s)
        return lease_id

    def release(self, lease_id: int, used_tokens: int | None) -> None:
        held = self._leases.pop(lease_id, None)
        if held is not None:
            held[0].release(used_tokens)

    def leases(self) -> int:
        return len(self._leases)

    def _expire(self) -> None:
        now = self.clock()
        for lease_id in [i for i, (_, expiry) in self._leases.items() if expiry < now]:
            lease, _ = self._leases.pop(lease_id)
            lease.release(None)                   # its tokens stay spent: nobody said how many were used
            log.warning("a request lease expired unreleased (its ingress went away?)")

    # ---- adapters loaded at run time --------------------------------------------------------

    def adapters(self) -> dict[str, tuple[str, bool]]:
        return dict(self._adapters)

    def set_adapter(self, name: str, path: str, force: bool) -> None:
        self._adapters[name] = (path, force)

    def drop_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)

    # ---- request metrics of every ingress ----------------------------------------------------

    def report(self, ingress: str, families: list) -> dict[str, list]:
        """Keep `ingress`'s request metrics; -> those of every ingress that reported lately."""
        now = self.clock()
        self._ingress[ingress] = (now, families)
        self._ingress = {i: v for i, v in self._ingress.items() if now - v[0] < INGRESS_STALE_S}
        return {i: fams for i, (_, fams) in self._ingress.items()}


class RemoteLease:
    """One admitted request's hold on the shared limits; `release` exactly once (it does not wait)."""

    def __init__(self, handle, lease_id: int | None):
        self._handle, self._id, self._done = handle, lease_id, False

    def release(self, used_tokens: int | None = None) -> None:
        if self._done or self._id is None:
            return
        self._done = True
        self._handle.release.remote(self._id, used_tokens)       # fire and forget: nothing to wait for


class RemoteLimiter:
    """The ingress's limiter: Limiter's check/acquire, answered by the SharedState replica."""

    def __init__(self, handle):
        self.handle = handle

    @staticmethod
    def _unlimited(tenant: Tenant) -> bool:
        rl = tenant.rate_limit
        return rl.requests_per_minute is None and rl.tokens_per_minute is None and rl.max_concurrent is None

    async def _ask(self, method: str, *args):
        try:
            return await getattr(self.handle, method).remote(*args)
        except Exception as e:                   # the SharedState replica is down or restarting
            log.warning("shared limits unreachable (%s: %s): refusing limited requests", type(e).__name__, e)
            raise OverloadedError("this server cannot check rate limits right now; retry shortly",
                                  retry_after=2.0) from None

    async def check_async(self, tenant: Tenant) -> None:
        if self._unlimited(tenant):
            return
        refused = await self._ask("check", _limits_only(tenant))
        if refused is not None:
            raise RateLimitError(refused[0], retry_after=refused[1])

    async def acquire_async(self, tenant: Tenant, tokens: int) -> RemoteLease:
        if self._unlimited(tenant):
            return RemoteLease(self.handle, None)
        got = await self._ask("acquire", _limits_only(tenant), tokens)
        if isinstance(got, tuple):
            raise RateLimitError(got[0], retry_after=got[1])
        return RemoteLease(self.handle, got)


def _limits_only(tenant: Tenant) -> Tenant:
    """What the shared limiter needs of a tenant: its name and limits, never its key digests."""
    return Tenant(tenant.name, rate_limit=tenant.rate_limit)
