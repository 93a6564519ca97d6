"""The cluster's shared state (global limits, run-time adapters, ingress metrics), its metrics merge,
and the --ray options, without Ray: SharedState is the plain class its one replica runs."""

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from loraops.errors import ConfigError
from loraops.serve.cluster.metrics import merge, render
from loraops.serve.cluster.shared import SharedState
from loraops.serve.config import ClusterOptions, ServeOptions, check_options
from loraops.serve.tenancy import RateLimit, Tenant


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_limits_are_counted_once_whoever_asks():
    clock = Clock()
    shared = SharedState(clock=clock)
    t = Tenant("acme", rate_limit=RateLimit(requests_per_minute=3, max_concurrent=2))
    first, second = shared.acquire(t, 10), shared.acquire(t, 10)       # e.g. from two ingress replicas
    assert isinstance(first, int) and isinstance(second, int) and first != second
    refused = shared.acquire(t, 10)
    assert isinstance(refused, tuple) and "2 requests in flight" in refused[0]
    assert shared.check(t) is not None
    shared.release(first, 4)
    assert shared.check(t) is None and isinstance(shared.acquire(t, 10), int)
    shared.release(second, 4)
    why, wait = shared.acquire(t, 10)                                  # the fourth request in the minute
    assert "3 requests per minute" in why and wait > 0
    clock.t += 60
    assert isinstance(shared.acquire(t, 10), int)


def test_a_lease_nobody_releases_expires():
    clock = Clock()
    shared = SharedState(lease_ttl_s=30, clock=clock)
    t = Tenant("acme", rate_limit=RateLimit(max_concurrent=1))
    assert isinstance(shared.acquire(t, 1), int)                        # its ingress dies: never released
    assert shared.check(t) is not None
    clock.t += 31
    assert shared.check(t) is None and shared.leases() == 0


def test_releasing_twice_or_an_unknown_lease_changes_nothing():
    shared = SharedState()
    t = Tenant("acme", rate_limit=RateLimit(max_concurrent=1))
    lease = shared.acquire(t, 1)
    shared.release(lease, None)
    assert isinstance(shared.acquire(t, 1), int)
    shared.release(lease, None)                                         # already released
    shared.release(12345, None)
    assert isinstance(shared.acquire(t, 1), tuple)                      # the second lease still holds


def test_run_time_adapters_are_kept_for_replicas_that_start_later():
    shared = SharedState()
    shared.set_adapter("x", "/data/x", False)
    shared.set_adapter("y", "/data/y", True)
    shared.drop_adapter("x")
    shared.drop_adapter("never-there")
    assert shared.adapters() == {"y": ("/data/y", True)}


def test_ingress_reports_are_shared_and_stale_ones_dropped():
    clock = Clock()
    shared = SharedState(clock=clock)
    assert shared.report("i1", ["f1"]) == {"i1": ["f1"]}
    clock.t += 5
    assert shared.report("i2", ["f2"]) == {"i1": ["f1"], "i2": ["f2"]}
    clock.t += 12                                                       # i1 last reported 17 s ago
    assert shared.report("i2", ["f3"]) == {"i2": ["f3"]}


def registry_with(requests: float, depth: float) -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("loraops_slot_hits", "Hits.", registry=r).inc(requests)
    Gauge("loraops_queue_depth", "Depth.", registry=r).set(depth)
    Counter("loraops_requests", "Requests.", ["model"], registry=r).labels("a").inc(requests)
    return r


def test_metrics_of_several_replicas_merge_into_one_family_each_with_a_replica_label():
    sources = [({"replica": "r1"}, list(registry_with(3, 1).collect())),
               ({"replica": "r2"}, list(registry_with(5, 2).collect()))]
    text = render(merge(sources)).decode()
    assert text.count("# TYPE loraops_slot_hits_total counter") == 1           # one family, both replicas' samples
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("loraops_slot_hits_total", (("replica", "r1"),))] == 3
    assert samples[("loraops_slot_hits_total", (("replica", "r2"),))] == 5
    assert samples[("loraops_queue_depth", (("replica", "r2"),))] == 2
    assert samples[("loraops_requests_total", (("model", "a"), ("replica", "r1")))] == 3


def cluster_opts(**kw) -> ServeOptions:
    return ServeOptions("tiny", insecure_no_auth=True, cluster=ClusterOptions(**kw))


@pytest.mark.parametrize("kw, message", [({"replicas": 0}, "--replicas"), ({"threads_per_replica": 0}, "--threads-per"),
                                         ({"replica_cpus": 0.0}, "--replica-cpus"),
                                         ({"ingress_replicas": 0}, "--ingress-replicas"),
                                         ({"ingress_cpus": -1.0}, "--ingress-cpus")])
def test_bad_cluster_options_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        check_options(cluster_opts(**kw))


def test_threads_belongs_to_the_single_process_server():
    opts = cluster_opts()
    opts.threads = 2
    with pytest.raises(ConfigError, match="--threads-per-replica"):
        check_options(opts)


def test_an_encoder_base_is_refused_with_ray(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    opts = cluster_opts()
    opts.base = str(tmp_path)
    with pytest.raises(ConfigError, match="encoder"):
        check_options(opts)
