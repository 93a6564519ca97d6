"""/metrics of `loraops serve --ray`: every replica's series in one Prometheus text, per replica and
summable across them.

Each engine replica keeps its own ServeMetrics (TTFT and time per token by model and tenant, batch
size, queue depth, KV use, slot hits / misses / evictions, resident adapters, loads, speculation);
each ingress replica counts requests, tokens and errors by model, tenant and status. Any ingress
renders them all: the engine replicas' families with a `replica` label (from the view's snapshots),
every ingress's request families with an `ingress` label (exchanged through SharedState), and a few
cluster series: replicas live and expected, and which adapter is resident where. Aggregate with
PromQL, e.g. `sum without (replica) (rate(loraops_slot_hits_total[5m]))`: each replica's slot hits
are the requests that landed where their adapter was already resident (affinity hits), misses the
ones that had to load it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from loraops.serve.metrics import ServeMetrics

REQUEST_FAMILIES = frozenset({"loraops_requests", "loraops_prompt_tokens", "loraops_completion_tokens",
                              "loraops_errors", "loraops_replica_lost_retries", "loraops_replica_lost_failures"})


def merge(sources: list[tuple[dict[str, str], list[Metric]]]) -> list[Metric]:
    """Metric families of several registries as one list: every sample gets its source's labels
    (e.g. {"replica": id}), and the families of one name become one family."""
    merged: dict[str, Metric] = {}
    for labels, families in sources:
        for fam in families:
            into = merged.get(fam.name)
            if into is None:
                into = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            into.samples.extend(Sample(s.name, {**s.labels, **labels}, s.value, s.timestamp, s.exemplar)
                                for s in fam.samples)
    return list(merged.values())


class _Families:
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return iter(self.families)


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


class ClusterMetrics(ServeMetrics):
    """An ingress's metrics: its own request counters (the routes count into them as in one
    process), rendered together with the other replicas' series."""

    def __init__(self, ingress_id: str):
        super().__init__()
        self.ingress_id = ingress_id
        self.lost_retries = Counter("loraops_replica_lost_retries", "Requests sent again because their engine "
                                    "replica went away before answering.", registry=self.registry)
        self.lost_failures = Counter("loraops_replica_lost_failures", "Requests failed with 503 because their "
                                     "engine replica went away while answering.", registry=self.registry)
        self.view = None                              # client.ClusterView, set by the ingress
        self.ingresses: dict[str, list[Metric]] = {}  # every ingress's request families (SharedState.report)

    def request_families(self) -> list[Metric]:
        return [f for f in self.registry.collect() if f.name in REQUEST_FAMILIES]

    def families(self) -> list[Metric]:
        ingresses = {**self.ingresses, self.ingress_id: self.request_families()}    # our own: current
        snaps = {} if self.view is None else dict(self.view.snapshots)
        sources = [({"ingress": i}, fams) for i, fams in sorted(ingresses.items())]
        sources += [({"replica": r}, s.metrics) for r, s in sorted(snaps.items())]
        live = GaugeMetricFamily("loraops_cluster_replicas", "Engine replicas that answered the last view refresh.",
                                 value=len(snaps))
        expected = GaugeMetricFamily("loraops_cluster_replicas_expected", "Engine replicas configured.",
                                     value=0 if self.view is None else self.view.expected)
        where = GaugeMetricFamily("loraops_cluster_adapter_resident", "1 for each adapter resident in a "
                                  "replica's slot pool.", labels=["replica", "model"])
        for r, s in sorted(snaps.items()):
            for model in sorted(s.resident):
                where.add_metric([r, model], 1)
        return merge(sources) + [live, expected, where]

    def render(self) -> bytes:
        return render(self.families())

    def live(self, families: list | None = None) -> dict[str, float]:
        return super().live(self.families() if families is None else families)
