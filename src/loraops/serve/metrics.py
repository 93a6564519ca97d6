"""Prometheus metrics, in a CollectorRegistry per app (never the process-global one).

Per model and tenant: requests by status, prompt and completion tokens, time to first token, time
per output token, errors by code. The model label is the adapter id or base name; a composition is
labelled by its sorted part names without weights (ModelRef.label): weights are client input,
and labels must stay bounded. Engine: batch size, queue depth, KV
tokens and blocks in use, slot hits / misses / evictions, resident adapters, adapter load time,
speculative draft tokens verified and accepted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        mt = ["model", "tenant"]
        self.requests = Counter("loraops_requests", "Requests by final HTTP status.", mt + ["status"], registry=r)
        self.prompt_tokens = Counter("loraops_prompt_tokens", "Prompt tokens processed.", mt, registry=r)
        self.completion_tokens = Counter("loraops_completion_tokens", "Tokens generated.", mt, registry=r)
        self.errors = Counter("loraops_errors", "Error responses by error code.", mt + ["code"], registry=r)
        self.ttft = Histogram("loraops_time_to_first_token_seconds", "Arrival to first token.", mt,
                              buckets=_LATENCY, registry=r)
        self.tpot = Histogram("loraops_time_per_output_token_seconds", "Mean gap between output tokens.", mt,
                              buckets=_LATENCY, registry=r)
        self.batch_size = Gauge("loraops_batch_size", "Sequences in the last engine step.", registry=r)
        self.batch_hist = Histogram("loraops_batch_size_per_step", "Sequences per engine step.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("loraops_queue_depth", "Requests waiting for admission.", registry=r)
        self.kv_tokens = Gauge("loraops_kv_tokens_reserved", "KV-cache tokens reserved by running sequences.",
                               registry=r)
        self.kv_blocks = Gauge("loraops_kv_blocks_used", "KV-cache blocks in use.", registry=r)
        self.kv_blocks_total = Gauge("loraops_kv_blocks_total", "KV-cache blocks in all.", registry=r)
        self.slot_hits = Counter("loraops_slot_hits", "Requests whose adapter was resident.", registry=r)
        self.slot_misses = Counter("loraops_slot_misses", "Requests whose adapter had to be loaded.", registry=r)
        self.slot_evictions = Counter("loraops_slot_evictions", "Adapters evicted from a slot.", registry=r)
        self.resident = Gauge("loraops_resident_adapters", "Adapters in the slot pool.", registry=r)
        self.adapter_load = Histogram("loraops_adapter_load_seconds", "Reading and checking an adapter.",
                                      buckets=_LATENCY, registry=r)
        self.spec_drafted = Counter("loraops_spec_draft_tokens", "Speculative (n-gram) draft tokens verified.",
                                    registry=r)
        self.spec_accepted = Counter("loraops_spec_accepted_tokens", "Draft tokens the model agreed with (each "
                                     "one a token generated without a step of its own).", registry=r)
        self._seen = (0, 0, 0)
        self._spec_seen = (0, 0)

    def observe_engine(self, engine, batch: int) -> None:
        """Called by the engine thread after each step."""
        self.observe_encoder(engine, batch)
        cache = engine.cache
        self.kv_blocks.set(cache.used_blocks)
        self.kv_blocks_total.set(cache.num_blocks)
        self.kv_tokens.set(sum(s.budget for s in list(engine.running)))
        drafted, accepted = engine.spec_stats
        self.spec_drafted.inc(drafted - self._spec_seen[0])
        self.spec_accepted.inc(accepted - self._spec_seen[1])
        self._spec_seen = (drafted, accepted)

    def observe_encoder(self, engine, batch: int) -> None:
        """Called by an engine thread after each step: what every engine has (for the encoder,
        `batch` counts the inputs classified in the step)."""
        if batch:
            self.batch_hist.observe(batch)
        self.batch_size.set(batch)
        self.queue_depth.set(engine.queue_depth())
        st = engine.pool.stats
        h, m, e = self._seen
        self.slot_hits.inc(st.hits - h)
        self.slot_misses.inc(st.misses - m)
        self.slot_evictions.inc(st.evictions - e)
        self._seen = (st.hits, st.misses, st.evictions)
        self.resident.set(len(engine.pool.resident()))

    def live(self, families: list | None = None) -> dict[str, float]:
        """A few headline numbers for the dashboard: totals and means over the server's life, plus
        tokens/s since the previous call; over `families` (metric families, summed over their
        labels: several replicas' in a cluster), by default this registry's."""
        import time

        fams = list(self.registry.collect()) if families is None else families

        def total(name, suffix=""):
            return sum(s.value for m in fams if m.name == name for s in m.samples if s.name.endswith(suffix))

        tokens, now = total("loraops_completion_tokens", "_total"), time.monotonic()
        last_tokens, last_t = getattr(self, "_last_live", (tokens, now))
        self._last_live = (tokens, now)
        ttft_n = total("loraops_time_to_first_token_seconds", "_count")
        return {"tokens/s (since last view)": (tokens - last_tokens) / (now - last_t) if now > last_t else 0.0,
                "completion tokens": tokens,
                "mean TTFT (s)": total("loraops_time_to_first_token_seconds", "_sum") / ttft_n if ttft_n else 0.0,
                "queue depth": total("loraops_queue_depth"),
                "running sequences": total("loraops_batch_size"),
                "resident adapters": total("loraops_resident_adapters"),
                "KV blocks used": total("loraops_kv_blocks_used")}

    def render(self) -> bytes:
        return generate_latest(self.registry)
