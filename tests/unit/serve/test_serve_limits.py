"""Token buckets and the per-tenant limiter, on a fake clock."""

import pytest

from loraops.serve.errors import RateLimitError
from loraops.serve.limits import Limiter, TokenBucket
from loraops.serve.tenancy import RateLimit, Tenant


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def tenant(name="t", **rl):
    return Tenant(name, adapters=frozenset(), rate_limit=RateLimit(**rl))


def test_bucket_refills_continuously():
    clock = Clock()
    b = TokenBucket(60, clock)                      # one per second
    b.take(60)
    assert b.wait_for(1) == pytest.approx(1.0)
    clock.t = 0.5
    assert b.wait_for(1) == pytest.approx(0.5)
    clock.t = 1.0
    assert b.wait_for(1) == 0


def test_requests_per_minute_refuses_with_retry_after():
    clock = Clock()
    lim, t = Limiter(clock), tenant(requests_per_minute=2)
    lim.acquire(t, 1).release(1)
    lim.acquire(t, 1).release(1)
    with pytest.raises(RateLimitError) as e:
        lim.acquire(t, 1)
    assert e.value.retry_after == pytest.approx(30.0)
    clock.t = 30.0
    lim.acquire(t, 1)


def test_tokens_per_minute_charges_up_front_and_refunds_unused():
    clock = Clock()
    lim, t = Limiter(clock), tenant(tokens_per_minute=100)
    lease = lim.acquire(t, 80)
    with pytest.raises(RateLimitError):
        lim.acquire(t, 30)
    lease.release(used_tokens=20)                    # 60 refunded
    lim.acquire(t, 30)


def test_concurrency_cap_and_release_once():
    lim, t = Limiter(Clock()), tenant(max_concurrent=1)
    lease = lim.acquire(t, 1)
    with pytest.raises(RateLimitError):
        lim.acquire(t, 1)
    lease.release()
    lease.release()                                  # idempotent: cannot free a second seat
    lim.acquire(t, 1)
    with pytest.raises(RateLimitError):
        lim.acquire(t, 1)


def test_a_refused_request_costs_nothing_and_tenants_are_independent():
    lim = Limiter(Clock())
    a, b = tenant("a", requests_per_minute=2, tokens_per_minute=10), tenant("b", requests_per_minute=1)
    lim.acquire(a, 8)
    with pytest.raises(RateLimitError, match="tokens per minute"):
        lim.acquire(a, 5)                           # refused on tokens: its request is not charged
    lim.acquire(a, 2)                               # so the second request of the minute still fits
    lim.acquire(b, 1)
