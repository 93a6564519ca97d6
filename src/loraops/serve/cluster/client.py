"""The ingress's engine: the Engine interface the HTTP routes use (submit, cancel, models, has_model,
check_lengths, add/remove_adapter, alive), answered by the engine replicas.

submit starts a task that calls `EngineReplica.generate` through the deployment handle, with the
request's routing key as the multiplexed model id, and hands the events it streams back to the
request's sink as they come; cancel cancels that task, which cancels the remote generator, which
cancels the sequence in the replica's engine.

A replica lost (killed, crashed, restarted by Serve) while it holds a request: if nothing was
streamed to the client yet, the request is sent once more (to a live replica: Ray's router knows);
otherwise, or if the second try fails too, it ends with a 503 `replica_unavailable`. It can never
come back with another adapter's tokens: the model travels with the request, and a retry starts it
afresh. Ray's router refusing more work (every replica full, its queue full) is a 503 too.

What the routes ask without a request (models, visibility, lengths, readiness) comes from a view of
the replicas' snapshots, refreshed by a broadcast every `view_s` (ClusterView); a model counts as
served when every live replica serves it, so an answer does not depend on which replica is asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

from loraops.errors import LoraOpsError
from loraops.serve.catalog import AdapterEntry
from loraops.serve.engine import check_lengths, check_logit_bias, check_parts
from loraops.serve.errors import InternalError, OverloadedError, ServeError
from loraops.serve.events import ErrorEvent, TokenEvent
from loraops.serve.model_ref import ModelRef
from loraops.serve.sampling import SamplingParams

log = logging.getLogger("loraops.serve")

VIEW_TIMEOUT_S = 10.0


class ReplicaLostError(ServeError):
    """The engine replica serving a request went away after it had started answering."""

    status, code, kind = 503, "replica_unavailable", "server_error"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class RemoteSequence:
    """A request sent to an engine replica (the routes read tenant, model and prompt)."""

    tenant: str
    model: ModelRef
    prompt: list[int]
    params: SamplingParams
    streamed: bool = False                 # a token reached the sink: no more retries
    task: asyncio.Task | None = field(default=None, repr=False)


class ClusterView:
    """The latest snapshot of every live engine replica (replica.ReplicaSnapshot), by replica id."""

    def __init__(self, handle, expected: int):
        self.handle, self.expected = handle, expected
        self.snapshots: dict = {}
        self.stamp = 0.0                   # time.monotonic() of the last complete refresh

    async def refresh(self) -> None:
        results = await self.handle.broadcast("snapshot").results_async(timeout_s=VIEW_TIMEOUT_S,
                                                                        return_exceptions=True)
        self.snapshots = {s.replica: s for s in results if not isinstance(s, BaseException)}
        self.stamp = time.monotonic()

    def fresh(self, max_age_s: float) -> bool:
        return time.monotonic() - self.stamp <= max_age_s

    def any(self):
        """One replica's snapshot (for what all share: base, context, caps). 503 before any is up."""
        for snap in self.snapshots.values():
            return snap
        raise OverloadedError("the engine replicas are starting; retry shortly", retry_after=2.0)

    def served(self) -> dict[str, AdapterEntry]:
        """Adapters every live replica serves, by model id."""
        snaps = list(self.snapshots.values())
        if not snaps:
            return {}
        common = set.intersection(*({e.model_id for e in s.models} for s in snaps))
        return {e.model_id: e for e in snaps[0].models if e.model_id in common}


class ClusterEngine:
    task = "generation"

    def __init__(self, handle, shared, view: ClusterView, tokenizer, base_name: str, vocab_size: int,
                 view_s: float = 1.0, affinity: bool = True, metrics=None):
        """handle: the EngineReplica deployment's; shared: the SharedState deployment's (it keeps the
        adapters loaded at run time for replicas that start later); tokenizer and vocab_size: the
        base's (the ingress tokenizes and compiles grammars itself); metrics: metrics.ClusterMetrics."""
        self.handle, self.shared, self.view, self.view_s = handle, shared, view, view_s
        self.affinity, self.metrics = affinity, metrics
        self.tokenizer, self.base_name, self.vocab_size = tokenizer, base_name, vocab_size
        self._background: set[asyncio.Task] = set()

    # ---- what the routes ask -----------------------------------------------------------------

    def models(self) -> list[AdapterEntry]:
        return list(self.view.served().values())

    def resident(self) -> dict[str, int]:
        """model id -> slot, on the first replica (in snapshot order) that holds it."""
        out: dict[str, int] = {}
        for snap in self.view.snapshots.values():
            for model_id, slot in snap.resident.items():
                out.setdefault(model_id, slot)
        return out

    def has_model(self, model_id: str) -> bool:
        return model_id == self.view.any().base or model_id in self.view.served()

    def check_lengths(self, prompt_tokens: int, max_tokens: int) -> None:
        snap = self.view.any()
        check_lengths(prompt_tokens, max_tokens, snap.max_tokens_cap, snap.max_context)

    def alive(self) -> bool:
        """Ready: every expected replica answered the last refresh, recently, with its engine running."""
        snaps = self.view.snapshots.values()
        return (self.view.fresh(3 * self.view_s + VIEW_TIMEOUT_S) and len(snaps) >= self.view.expected
                and all(s.alive for s in snaps))

    # ---- requests ----------------------------------------------------------------------------

    def submit(self, tenant: str, model: ModelRef | str, prompt: list[int], params: SamplingParams, sink,
               constraint=None) -> RemoteSequence:
        """As Engine.submit; the events reach `sink` from this event loop. Must be called on it."""
        ref = ModelRef.of(model)
        check_parts(ref, self.view.any().max_slots)
        self.check_lengths(len(prompt), params.max_tokens)
        check_logit_bias(params, self.vocab_size)
        seq = RemoteSequence(tenant, ref, list(prompt), params)
        grammar = None if constraint is None else constraint.grammar      # the replica builds its matcher
        seq.task = asyncio.get_running_loop().create_task(self._pump(seq, sink, grammar))
        return seq

    def cancel(self, seq: RemoteSequence) -> None:
        if seq.task is not None:
            seq.task.cancel()

    def _handle_for(self, ref: ModelRef):
        if not self.affinity or (not ref.is_composition and ref.id == self.base_name):
            return self.handle.options(stream=True)                       # by load alone
        return self.handle.options(stream=True, multiplexed_model_id=ref.routing_key)

    async def _pump(self, seq: RemoteSequence, sink, grammar) -> None:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        handle = self._handle_for(seq.model)
        for attempt in (1, 2):
            gen = handle.generate.remote(seq.tenant, seq.model, seq.prompt, seq.params, grammar)
            try:
                async for batch in gen:
                    for ev in batch:
                        seq.streamed = seq.streamed or isinstance(ev, TokenEvent)
                        sink(ev)
                return
            except asyncio.CancelledError:
                gen.cancel()
                raise
            except BackPressureError:
                sink(ErrorEvent(OverloadedError("every engine replica is busy; retry later")))
                return
            except (RayActorError, ReplicaUnavailableError) as e:
                if seq.streamed or attempt == 2:
                    log.warning("engine replica lost while answering (%s)", type(e).__name__)
                    self._count("lost_failures")
                    sink(ErrorEvent(ReplicaLostError("the engine replica serving this request went away; "
                                                     "retry the request")))
                    return
                log.warning("engine replica lost before answering (%s): sending the request once more",
                            type(e).__name__)
                self._count("lost_retries")
            except Exception:
                log.exception("request to an engine replica failed")
                sink(ErrorEvent(InternalError("internal error while generating")))
                return

    def _count(self, counter: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, counter).inc()

    # ---- adapters loaded at run time (admin routes) ------------------------------------------

    def add_adapter(self, model_id: ModelRef | str, path: str, force: bool = False) -> AdapterEntry:
        """Serve `path` as `model_id` on every replica (blocking: call it from a worker thread). Each
        replica validates it as one process would; if every one refuses, they keep what they served
        and the refusal is raised. If only some refuse (a path missing on some node), the name is
        removed everywhere rather than served differently by different replicas."""
        name = model_id.id if isinstance(model_id, ModelRef) else model_id
        before = self.shared.adapters.remote().result(timeout_s=30).get(name)
        self.shared.set_adapter.remote(name, path, force).result(timeout_s=30)   # replicas starting now get it
        results = self.handle.broadcast("add_adapter", name, path, force).results(timeout_s=120,
                                                                                 return_exceptions=True)
        entries = [r for r in results if isinstance(r, AdapterEntry)]
        if results and len(entries) == len(results):
            # served from now on, not only after the next refresh (views are swapped whole: thread-safe)
            self.view.snapshots = {r: _with(snap, entries[0]) for r, snap in self.view.snapshots.items()}
            return entries[0]
        refusal = next((r for r in results if not isinstance(r, AdapterEntry)), None)
        if entries:                                        # some serve it, some refused
            self.shared.drop_adapter.remote(name).result(timeout_s=30)
            self.handle.broadcast("remove_adapter", name).results(timeout_s=30, return_exceptions=True)
            raise LoraOpsError(f"{len(results) - len(entries)} of {len(results)} engine replicas refused it "
                               f"({refusal}); it is served by none now")
        if before is None:
            self.shared.drop_adapter.remote(name).result(timeout_s=30)
        else:
            self.shared.set_adapter.remote(name, *before).result(timeout_s=30)
        if refusal is None:
            raise OverloadedError("no engine replica is running; retry shortly", retry_after=2.0)
        raise refusal if isinstance(refusal, LoraOpsError) else LoraOpsError(f"an engine replica failed: {refusal}")

    def remove_adapter(self, model_id: ModelRef | str) -> bool:
        """Stop serving `model_id` on every replica. Called on the event loop: the replicas are told
        without waiting, and the answer is the view's (was it served?)."""
        name = model_id.id if isinstance(model_id, ModelRef) else model_id
        known = name in self.view.served()
        # gone from the view now, not at the next refresh
        self.view.snapshots = {r: _without(snap, name) for r, snap in self.view.snapshots.items()}
        self._spawn(self.handle.broadcast("remove_adapter", name).results_async(timeout_s=30,
                                                                              return_exceptions=True))
        self.shared.drop_adapter.remote(name)
        return known

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _without(snap, model_id: str):
    return replace(snap, models=tuple(e for e in snap.models if e.model_id != model_id),
                   resident={k: v for k, v in snap.resident.items() if k != model_id})


def _with(snap, entry: AdapterEntry):
    return replace(snap, models=(*(e for e in snap.models if e.model_id != entry.model_id), entry))
