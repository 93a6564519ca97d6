"""The waiting queue: bounded, round-robin across tenants."""

import pytest

from loraops.serve.errors import OverloadedError
from loraops.serve.model_ref import ModelRef
from loraops.serve.sampling import SamplingParams
from loraops.serve.scheduler import FairQueue, Sequence


def seq(i, tenant):
    return Sequence(i, tenant, ModelRef.parse("m"), [1, 2], SamplingParams(), lambda ev: None, stream=None)


def test_a_flooding_tenant_does_not_starve_others():
    q = FairQueue(100)
    for i in range(10):
        q.push(seq(i, "flood"))
    q.push(seq(100, "b"))
    q.push(seq(101, "c"))
    order = [q.pick(lambda s: True).tenant for _ in range(6)]
    assert order == ["flood", "b", "c", "flood", "flood", "flood"]


def test_within_a_tenant_order_is_fifo_and_unready_requests_are_skipped():
    q = FairQueue(10)
    for i in range(3):
        q.push(seq(i, "t"))
    assert q.pick(lambda s: s.id != 0).id == 1
    assert q.pick(lambda s: True).id == 0
    assert q.pick(lambda s: False) is None and len(q) == 1


def test_full_queue_is_refused():
    q = FairQueue(2)
    q.push(seq(0, "a"))
    q.push(seq(1, "b"))
    with pytest.raises(OverloadedError):
        q.push(seq(2, "c"))


def test_remove_takes_a_cancelled_request_out():
    q = FairQueue(5)
    s = seq(0, "a")
    q.push(s)
    assert q.remove(s) and len(q) == 0 and not q.remove(s)
