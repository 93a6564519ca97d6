"""One engine replica of `loraops serve --ray`: the base loaded once, its own slot pool and KV cache,
the single-process server's Engine unchanged (continuous batching, every fast path), fed by the
ingress through a Ray Serve deployment handle.

Routing. The ingress sends each request with its routing key (ModelRef.routing_key: the adapter id,
"name@V" for a pinned version, a composition's sorted part ids) as Ray Serve's multiplexed model id.
`_hold` is this replica's @serve.multiplexed loader, an LRU bounded by the slot count: Ray's router
learns from it which keys a replica holds and sends the next request for a key there, so an adapter's
requests keep landing where its weights are resident. It registers a pinned registry version on
first use; the weights themselves go into a slot when the engine admits the request (the engine's
own LRU, as in one process). The base alone routes by load only.

Streaming. `generate` is an async generator: the engine thread's events cross to this replica's event
loop through a queue and leave in lists (whatever arrived since the last yield: one message per
engine step, not one per token). If the caller goes away, Ray cancels the generator and the sequence
is cancelled in the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from prometheus_client import Counter, ProcessCollector
from ray import serve

from loraops.errors import LoraOpsError
from loraops.serve.catalog import AdapterEntry
from loraops.serve.config import ServeOptions
from loraops.serve.errors import ModelNotFoundError, ServeError
from loraops.serve.events import ErrorEvent, TokenEvent
from loraops.serve.grammar import Grammar, RowConstraint
from loraops.serve.metrics import ServeMetrics
from loraops.serve.model_ref import ModelRef
from loraops.serve.sampling import SamplingParams

log = logging.getLogger("loraops.serve")


@dataclass(frozen=True)
class ReplicaSnapshot:
    """What an engine replica tells each ingress at every view refresh: enough to answer /v1/models,
    /ready, the length checks and /metrics without a call per request."""

    replica: str
    pid: int
    node: str
    alive: bool                            # the engine and loader threads run
    base: str
    max_context: int
    max_tokens_cap: int
    max_slots: int
    models: tuple[AdapterEntry, ...]
    resident: dict[str, int]               # model id -> slot
    production: dict[str, int]             # registry name -> production version served
    queue: int
    running: int
    metrics: list                          # this replica's prometheus_client metric families


def portable(error: ServeError) -> ServeError:
    """`error` as a plain ServeError with the same status, code, type, message, param and Retry-After:
    it crosses process boundaries whatever its own class's __init__ takes."""
    copy = ServeError(error.message, error.param)
    copy.status, copy.code, copy.kind = error.status, error.code, error.kind
    if getattr(error, "retry_after", None) is not None:
        copy.retry_after = error.retry_after
    return copy


class EngineReplica:
    async def __init__(self, opts: ServeOptions, shared):
        """opts: the server's options (opts.cluster set); shared: the SharedState deployment's handle,
        for the adapters loaded at run time (so a restarted replica serves them too)."""
        import torch

        from loraops.serve.server import make_engine

        torch.set_num_threads(opts.cluster.threads_per_replica)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.metrics = ServeMetrics()
        self.tokens = Counter("loraops_replica_tokens", "Tokens this replica generated.", registry=self.metrics.registry)
        ProcessCollector(registry=self.metrics.registry)      # process_resident_memory_bytes, cpu seconds
        adapters = await shared.adapters.remote()
        self.engine, self.watcher = await asyncio.to_thread(make_engine, opts, self.metrics, adapters)
        self.engine.start()
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.start)

        async def hold(routing_key: str) -> str:     # a version that cannot be served is not recorded
            await asyncio.to_thread(self._pin, routing_key)
            return routing_key
        self._hold = serve.multiplexed(max_num_models_per_replica=opts.engine.max_slots)(hold)
        log.info("engine replica %s ready (pid %d)", self.replica_id, os.getpid())

    def _pin(self, routing_key: str) -> None:
        """Register the pinned registry versions among the key's parts (blocks on the registry)."""
        for part in routing_key.split("+"):
            if "@" in part and self.watcher is not None and not self.watcher.pin(part):
                raise ModelNotFoundError(f"the model {part!r} does not exist", param="model")

    async def generate(self, tenant: str, model: ModelRef, prompt: list[int], params: SamplingParams,
                       grammar: Grammar | None = None):
        """Stream one request's events (events.py) in lists, ending with its DoneEvent or ErrorEvent."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(ev):
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:                           # the loop is gone (replica shutting down)
                pass
        try:
            key = serve.get_multiplexed_model_id()
            if key:
                await self._hold(key)                      # Ray learns this replica holds the key
            if any(p.version is not None for p in model.parts):
                # every request, not only the first per key: it keeps a hot pin recently used, so the
                # watcher's cap on pinned versions never drops one that Ray still routes here
                await asyncio.to_thread(self._pin, model.routing_key)
            constraint = None if grammar is None else await asyncio.to_thread(
                RowConstraint, grammar, self.engine.tokenizer, self.engine.vocab_size)
            seq = self.engine.submit(tenant, model, prompt, params, sink, constraint)
        except ServeError as e:
            yield [ErrorEvent(portable(e))]
            return
        finished = False
        try:
            while not finished:
                batch = [await events.get()]
                while not events.empty():
                    batch.append(events.get_nowait())
                finished = not isinstance(batch[-1], TokenEvent)
                self.tokens.inc(sum(isinstance(e, TokenEvent) for e in batch))
                yield [ErrorEvent(portable(e.error)) if isinstance(e, ErrorEvent) else e for e in batch]
        finally:
            if not finished:                               # cancelled by the caller
                self.engine.cancel(seq)

    async def snapshot(self) -> ReplicaSnapshot:
        e = self.engine
        current = {} if self.watcher is None else dict(self.watcher.current)   # a copy: its thread writes it
        production = {n: v for n, (v, _) in current.items()}
        return ReplicaSnapshot(
            self.replica_id, os.getpid(), _node_ip(), e.alive(), e.base_name, e.max_context,
            e.config.max_tokens_cap, e.pool.max_slots, tuple(e.models()), e.resident(), production,
            e.queue_depth(), len(e.running), list(self.metrics.registry.collect()))

    async def add_adapter(self, name: str, path: str, force: bool) -> AdapterEntry | LoraOpsError:
        """Serve the adapter in `path` as `name`; the error as a value if it cannot be."""
        try:
            return await asyncio.to_thread(self.engine.add_adapter, name, path, force)
        except ServeError as e:
            return portable(e)
        except LoraOpsError as e:
            return LoraOpsError(str(e))

    async def remove_adapter(self, name: str) -> bool:
        return self.engine.remove_adapter(name)

    async def check_health(self) -> None:
        """Serve restarts a replica whose check fails: here, one whose engine or loader thread died."""
        if not self.engine.alive():
            raise RuntimeError("the engine thread or the adapter loader thread is not running")

    def __del__(self):
        if getattr(self, "watcher", None) is not None:
            self.watcher.stop()
        if getattr(self, "engine", None) is not None:
            self.engine.stop()


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()
