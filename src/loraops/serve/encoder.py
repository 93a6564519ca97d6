"""The encoder engine: sequence classification with many tenants' adapters in one batch.

    step():  loads applied; waiting requests whose adapter is resident admitted, fair across
             tenants, up to --max-batch inputs; one padded [B, L] forward with the padding mask;
             each request gets its rows' label probabilities

No KV cache and no decode loop: a request is one forward. The LoRA comes from the slot pool as
for a causal LM (MultiLoRALinear, one slot per token, padding tokens slot 0), each row's
`modules_to_save` (head, pooler) from its own adapter (saved_modules.py). Attention is the model
class's own, bidirectional over the real tokens: nothing is registered in its place.

Fault isolation as in runner.py: every op is per token or per row, so an adapter whose weights
overflow puts NaN/inf only in its own rows, and that request alone gets 500 non_finite_output; if
a forward raises, its requests run again one by one and only the one that raises fails.

Threads as in engine.py: API threads call `submit`, `cancel`, `add_adapter`, ...; the engine
thread alone touches the model and the slot pool; the catalog's loader thread reads adapter files.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from loraops.errors import ConfigError
from loraops.lora import Adapter
from loraops.models import EncoderBase
from loraops.serve.catalog import AdapterCatalog, AdapterEntry
from loraops.serve.config import EngineConfig
from loraops.serve.context import ForwardContext
from loraops.serve.engine_thread import EngineThread
from loraops.serve.errors import (BadRequestError, ContextLengthError, InternalError, ModelNotFoundError,
                                  NonFiniteOutputError, OverloadedError, ServeError)
from loraops.serve.events import ErrorEvent
from loraops.serve.layers import adaptable_paths, install
from loraops.serve.model_ref import ModelRef
from loraops.serve.saved_modules import SavedModules
from loraops.serve.scheduler import FairQueue
from loraops.train.classify import collate, max_length

log = logging.getLogger("loraops.serve")


@dataclass(eq=False)
class EncodeRequest:
    """One request: its inputs' token ids, classified by one model (an adapter or the base).
    `slot` is its adapter's pinned slot during its step (0: the base)."""

    id: int
    tenant: str
    model: ModelRef
    inputs: list[list[int]]
    sink: Callable[[object], None]             # receives one Classified or one ErrorEvent; must not block
    slot: int = 0
    counted_lookup: bool = False


@dataclass(frozen=True)
class Classified:
    labels: list[str]
    probs: torch.Tensor                        # [inputs, labels]: softmax over the head's fp32 logits


class EncoderEngine:
    task = "classification"

    def __init__(self, base: EncoderBase, config: EngineConfig | None = None, metrics=None):
        self.config = config = config or EngineConfig()
        self.base, self.model, self.tokenizer = base, base.model, base.tokenizer
        self.base_name = base.info.name
        self.metrics = metrics
        self.pad_id = self.tokenizer.pad_token_id or 0       # padding is masked: any id will do
        self.max_length = max_length(self.model, self.tokenizer, self.model.config.max_position_embeddings)
        self.saved = SavedModules(self.model, base.untrained)
        self.pool, self.lora_layers = install(self.model, config.max_slots, config.max_rank,
                                              self.saved.exclude(adaptable_paths(self.model)))
        self._check_token_rows()
        self._wake = threading.Event()
        self.catalog = AdapterCatalog(self.pool, self.base_name, base.info.fingerprint, self._wake.set, metrics,
                                      check=self._check)
        self.waiting = FairQueue(config.max_queue)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._thread = EngineThread("loraops-encoder", self.step, self.catalog, self._wake)

    def _check(self, adapter: Adapter) -> None:
        self.pool.check(replace(adapter, saved_modules={}))   # the LoRA part goes into a slot ...
        self.saved.check(adapter)                             # ... the saved modules are held beside it

    def _check_token_rows(self) -> None:
        """A per-token adapter choice needs every LoRA target to see one row per token. Some
        encoders (DeBERTa's relative-position projections) also run them over inputs that all
        rows share, which no per-row adapter can serve: refuse those at start."""
        seen = []
        hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].numel() // args[0].shape[-1]))
                 for m in self.lora_layers]
        try:
            with torch.no_grad():
                self.model(input_ids=torch.full((2, 3), self.pad_id))
        finally:
            for h in hooks:
                h.remove()
        if any(n != 6 for n in seen):
            raise ConfigError(f"{type(self.model).__name__}: some of its linear layers see inputs that are not one "
                              f"row per token; such an encoder cannot be served with per-request adapters")

    # ---- adapters (any thread) ---------------------------------------------------------------

    def read_checked(self, path: str, force: bool = False) -> Adapter:
        return self.catalog.read_checked(path, force)

    def add_adapter(self, model_id: ModelRef | str, path: str, force: bool = False) -> AdapterEntry:
        """As Engine.add_adapter: validate and serve (a hot swap if the id is served already)."""
        return self.catalog.register(model_id, path, force)

    def remove_adapter(self, model_id: ModelRef | str) -> bool:
        """Stop serving `model_id`; its waiting requests fail with 404."""
        mid = model_id.id if isinstance(model_id, ModelRef) else model_id
        if self.catalog.remove(mid) is None:
            return False
        self._fail_waiting(lambda r: r.model.id == mid, ModelNotFoundError(f"the model {mid!r} does not exist", "model"))
        return True

    def models(self) -> list[AdapterEntry]:
        return self.catalog.entries()

    def resident(self) -> dict[str, int]:
        return self.catalog.resident()

    def has_model(self, model_id: str) -> bool:
        return self.catalog.served(model_id)

    # ---- requests (any thread) ---------------------------------------------------------------

    def check_inputs(self, inputs: list[list[int]]) -> None:
        for i, ids in enumerate(inputs):
            if not ids:
                raise BadRequestError(f"input[{i}] is empty (no tokens)", param=f"input[{i}]")
            if len(ids) > self.max_length:
                raise ContextLengthError(f"input[{i}] has {len(ids)} tokens; this model takes at most "
                                         f"{self.max_length}", param=f"input[{i}]")

    def submit(self, tenant: str, model: ModelRef | str, inputs: list[list[int]], sink) -> EncodeRequest:
        """Queue the classification of `inputs` (token ids) by `model`; `sink` receives a
        Classified or an ErrorEvent. Raises ModelNotFoundError, BadRequestError or OverloadedError."""
        ref = ModelRef.of(model)
        if ref.is_composition:
            raise BadRequestError("a classification names one adapter: heads (modules_to_save) cannot be composed",
                                  param="model")
        self.check_inputs(inputs)
        if not self.catalog.resolve(ref) and not self.saved.base_servable:
            raise BadRequestError(f"the base {self.base_name!r} has no trained classification head; name an adapter",
                                  param="model")
        req = EncodeRequest(next(self._ids), tenant, ref, [list(x) for x in inputs], sink)
        with self._lock:
            victim = self.waiting.push(req)
        if victim is not None:
            victim.sink(ErrorEvent(OverloadedError("the server's queue is full and this tenant holds more than its "
                                                   "share of it; retry later")))
        self._wake.set()
        return req

    def cancel(self, req: EncodeRequest) -> None:
        """The client went away: drop the request if it still waits."""
        with self._lock:
            self.waiting.remove(req)

    def queue_depth(self) -> int:
        return len(self.waiting)

    def _fail_waiting(self, which: Callable[[EncodeRequest], bool], error: ServeError) -> None:
        with self._lock:
            failed = [r for r in self.waiting.waiting() if which(r)]
            for req in failed:
                self.waiting.remove(req)
        for req in failed:
            req.sink(ErrorEvent(error))

    # ---- the loop (engine thread) ------------------------------------------------------------

    def step(self) -> bool:
        """Apply loads, admit, run one batch, answer it. False if nothing ran."""
        for failed in self.catalog.apply():
            self._fail_waiting(lambda r: failed.key in self.catalog.keys_of(r.model), failed.error)
        batch = self._admit()
        try:
            outs = self._run(batch)
        finally:
            for req in batch:
                self.pool.unpin(req.slot)
        for req, out in zip(batch, outs):
            req.sink(out)
        if self.metrics is not None:
            self.metrics.observe_encoder(self, sum(len(r.inputs) for r in batch))
        return bool(batch)

    def _admit(self) -> list[EncodeRequest]:
        batch, rows, refused = [], 0, []
        with self._lock:
            while rows < self.config.max_batch:
                found: dict[int, str | None | ServeError] = {}
                req = self.waiting.pick(lambda r: self._ready(r, found))
                if req is None:
                    break
                key = found[req.id]
                if isinstance(key, ServeError):            # its adapter was removed after it was queued
                    refused.append((req, key))
                    continue
                req.slot = self.pool.acquire(key) if key is not None else 0
                batch.append(req)
                rows += len(req.inputs)
        for req, error in refused:
            req.sink(ErrorEvent(error))
        return batch

    def _ready(self, req: EncodeRequest, found: dict) -> bool:
        """Can `req` run now? Records its pool key (None: the base), or why it never can, in found[req.id]."""
        try:
            terms = self.catalog.resolve(req.model)
        except ServeError as e:
            found[req.id] = e
            return True
        key = found[req.id] = terms[0][0] if terms else None
        if key is None:
            return True
        slot = self.pool.lookup(key) if not req.counted_lookup else self.pool.resident().get(key)
        req.counted_lookup = True                          # a hit or a miss once per request
        if slot is None:
            self.catalog.request(key)                      # loads off this thread
        return slot is not None

    def _run(self, batch: list[EncodeRequest]) -> list[Classified | ErrorEvent]:
        if not batch:
            return []
        try:
            return self._forward(batch)
        except Exception:
            if len(batch) == 1:
                log.exception("classification request %d failed in the forward", batch[0].id)
                return [ErrorEvent(InternalError("internal error while classifying"))]
            log.warning("a forward of %d requests failed; running them one by one to find the one that fails",
                        len(batch), exc_info=True)
            return [out for req in batch for out in self._run([req])]

    def _forward(self, batch: list[EncodeRequest]) -> list[Classified | ErrorEvent]:
        rows = [(req.slot, ids) for req in batch for ids in req.inputs]
        n = self.config.max_batch
        logits = [row for i in range(0, len(rows), n) for row in self._logits(rows[i:i + n])]
        outs, start = [], 0
        for req in batch:
            labels = self.saved.labels(self.pool.held[req.slot])
            mine = torch.stack([r[:len(labels)] for r in logits[start:start + len(req.inputs)]]).float()
            start += len(req.inputs)
            if bool(torch.isfinite(mine).all()):
                outs.append(Classified(labels, torch.softmax(mine, dim=-1)))
            else:
                log.warning("classification request %d (%s): NaN/inf in its rows; failing it alone", req.id, req.model)
                outs.append(ErrorEvent(NonFiniteOutputError(
                    f"the model produced non-finite values (NaN or infinity) for this request; its adapter "
                    f"({req.model}) may hold very large weights")))
        return outs

    def _logits(self, rows: list[tuple[int, list[int]]]) -> torch.Tensor:
        """(slot, token ids) per row -> logits [B, k_max] (rows of narrower heads padded with -inf)."""
        ids, mask = collate([x for _, x in rows], self.pad_id)             # [B, L]
        slots = torch.tensor([s for s, _ in rows])[:, None] * mask          # [B, L]: padding uses no adapter
        ctx = ForwardContext.build(slots.reshape(-1), [], None)             # [B·L]: MultiLoRALinear's token order
        for m in self.lora_layers:
            m.serve_ctx = ctx
        self.saved.bind([self.pool.held[s] for s, _ in rows])
        try:
            with torch.no_grad():
                return self.model(input_ids=ids, attention_mask=mask).logits
        finally:
            for m in self.lora_layers:
                m.serve_ctx = None
            self.saved.bind(None)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.alive()

    def stop(self) -> None:
        self._thread.stop()

    def run_until_idle(self, max_steps: int = 10_000) -> None:
        """Drive the engine from the calling thread (tests; no threads started) until nothing is left."""
        for _ in range(max_steps):
            self.catalog.load_pending()
            if not self.step() and not len(self.waiting) and not self.catalog.pending():
                return
