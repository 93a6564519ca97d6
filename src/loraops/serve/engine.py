"""The serving engine: one base model, many adapters, iteration-level (continuous) batching.

    step():  batch = scheduler.schedule()     # loads applied, waiting requests admitted, drafts chosen
             out = runner.run(batch)          # one packed forward -> greedy tokens / logits / row errors
             postprocess(batch, out)          # drafts verified, tokens emitted, finished ones leave

scheduler.py (Sequence, FairQueue, Scheduler), runner.py (pack, ModelRunner, StepOutput),
postprocess.py (Postprocessor), catalog.py (AdapterCatalog and its loader thread), model_ref.py
(the parsed model id), events.py (what a request's sink receives), engine_thread.py (the thread
that runs `step`).

Threads: API threads call `submit`, `cancel`, `add_adapter`, ..., which touch only the queue and
the catalog under their locks; the engine thread runs `step` and alone touches the model, the slot
pool and the KV cache; the loader thread reads and validates adapter files off the request path.
"""

from __future__ import annotations

import itertools
import logging
import threading

from loraops.lora import Adapter
from loraops.models import LoadedBase
from loraops.serve.catalog import AdapterCatalog, AdapterEntry
from loraops.serve.config import EngineConfig
from loraops.serve.engine_thread import EngineThread
from loraops.serve.errors import BadRequestError, ContextLengthError, InternalError, ModelNotFoundError
from loraops.serve.events import DoneEvent, ErrorEvent, PromptLogprobsEvent, TokenEvent, TokenLogprob
from loraops.serve.model_ref import ModelRef
from loraops.serve.postprocess import Postprocessor
from loraops.serve.runner import ModelRunner
from loraops.serve.sampling import SamplingParams, TextStream, make_generator
from loraops.serve.scheduler import Batch, Scheduler, Sequence

__all__ = ["AdapterEntry", "DoneEvent", "Engine", "EngineConfig", "ErrorEvent", "ModelRef", "PromptLogprobsEvent",
           "TokenEvent", "TokenLogprob", "check_lengths", "check_logit_bias", "check_parts"]

log = logging.getLogger("loraops.serve")


def check_lengths(prompt_tokens: int, max_tokens: int, max_tokens_cap: int, max_context: int) -> None:
    """Refuse a request whose lengths this server cannot serve (BadRequestError / ContextLengthError)."""
    if max_tokens > max_tokens_cap:
        raise BadRequestError(f"max_tokens={max_tokens} exceeds this server's cap of {max_tokens_cap}",
                              param="max_tokens")
    if prompt_tokens == 0:
        raise BadRequestError("the prompt is empty", param="prompt")
    if prompt_tokens + max_tokens > max_context:
        raise ContextLengthError(
            f"this model's maximum context length is {max_context} tokens, but you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
            f"completion); shorten the prompt or lower max_tokens", param="max_tokens")


def check_parts(ref: ModelRef, max_slots: int) -> None:
    """Every part of a composition needs its own slot at once (BadRequestError past the slot count)."""
    if len(ref.parts) > max_slots:
        raise BadRequestError(f"a composition of {len(ref.parts)} adapters needs {len(ref.parts)} slots; "
                              f"this server has {max_slots}", param="model")


def check_logit_bias(params: SamplingParams, vocab_size: int) -> None:
    """logit_bias may name only token ids of this vocabulary (BadRequestError otherwise)."""
    if any(not 0 <= t < vocab_size for t, _ in params.logit_bias):
        raise BadRequestError(f"logit_bias keys must be token ids in [0, {vocab_size})", param="logit_bias")


class Engine:
    task = "generation"                                   # encoder.EncoderEngine's is "classification"

    def __init__(self, base: LoadedBase, config: EngineConfig | None = None, metrics=None):
        self.config = config = config or EngineConfig()
        self.base, self.model, self.tokenizer = base, base.model, base.tokenizer
        self.base_name = base.info.name
        self.metrics = metrics
        self.runner = ModelRunner(self.model, self.tokenizer, config)
        self.pool, self.cache, self.max_context = self.runner.pool, self.runner.cache, self.runner.max_context
        self.vocab_size = self.model.config.vocab_size    # the head may be an Int8Linear (no .weight)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self._wake = threading.Event()
        self.catalog = AdapterCatalog(self.pool, self.base_name, base.info.fingerprint, self._wake.set, metrics)
        self.scheduler = Scheduler(config, self.cache, self.pool, self.catalog)
        self.postprocess = Postprocessor(self.scheduler, self.eos_ids, metrics)
        self._ids = itertools.count(1)
        self._thread = EngineThread("loraops-engine", self.step, self.catalog, self._wake, self._fail_running)

    # ---- adapters (any thread) ---------------------------------------------------------------

    def read_checked(self, path: str, force: bool = False) -> Adapter:
        """Read an adapter directory and check it fits this base and the slot pool (raises LoraOpsError)."""
        return self.catalog.read_checked(path, force)

    def add_adapter(self, model_id: ModelRef | str, path: str, force: bool = False) -> AdapterEntry:
        """Validate and serve the adapter in `path` as `model_id` (canonicalised: "a@01" is "a@1");
        its weights go into a slot if one is free. Replacing an existing id is a hot swap: running
        requests finish on the old weights, waiting ones start on the new. `force` (a base
        fingerprint mismatch accepted) holds for every later reload. Raises BadRequestError or
        LoraOpsError (an unreadable or unfitting adapter)."""
        return self.catalog.register(model_id, path, force)

    def remove_adapter(self, model_id: ModelRef | str) -> bool:
        """Stop serving `model_id`. Waiting requests that use it fail with 404; running ones finish."""
        mid = model_id.id if isinstance(model_id, ModelRef) else model_id
        if self.catalog.remove(mid) is None:
            return False
        self.scheduler.fail_waiting(lambda s: mid in (p.id for p in s.model.parts),
                                    ModelNotFoundError(f"the model {mid!r} does not exist", "model"))
        return True

    def models(self) -> list[AdapterEntry]:
        return self.catalog.entries()

    def resident(self) -> dict[str, int]:
        """model id -> slot of the adapters whose current weights are in the pool."""
        return self.catalog.resident()

    def has_model(self, model_id: str) -> bool:
        """A served model id (canonical, ModelRef.id): the base or a registered adapter."""
        return self.catalog.served(model_id)

    # ---- requests (any thread) ---------------------------------------------------------------

    def check_lengths(self, prompt_tokens: int, max_tokens: int) -> None:
        check_lengths(prompt_tokens, max_tokens, self.config.max_tokens_cap, self.max_context)

    def submit(self, tenant: str, model: ModelRef | str, prompt: list[int], params: SamplingParams, sink,
               constraint=None) -> Sequence:
        """Queue a request for a model (a ModelRef; a string is parsed) and send its events to
        `sink` (events.py). Raises ModelNotFoundError, BadRequestError or OverloadedError (the
        queue is full and this tenant holds its share). `constraint` (grammar.RowConstraint)
        restricts the tokens this request may sample."""
        ref = ModelRef.of(model)
        check_parts(ref, self.pool.max_slots)
        self.check_lengths(len(prompt), params.max_tokens)
        check_logit_bias(params, self.vocab_size)
        self.catalog.resolve(ref)                          # unknown now: 404 now (resolved again at admission)
        seq = Sequence(next(self._ids), tenant, ref, list(prompt), params, sink,
                       TextStream(self.tokenizer, params.stop), make_generator(params), constraint)
        self.scheduler.add(seq)
        self._wake.set()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """The client went away: drop the sequence whether it waits or runs."""
        self.scheduler.cancel(seq)
        self._wake.set()

    def queue_depth(self) -> int:
        return len(self.scheduler.waiting)

    # ---- the loop (engine thread) ------------------------------------------------------------

    def step(self) -> bool:
        """One iteration: schedule, run the forward, postprocess. False if nothing ran."""
        batch = self.scheduler.schedule()
        if batch is not None:
            self.postprocess(batch, self.runner.run(batch))
        self._observe(batch)
        return batch is not None

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """The engine and loader threads are running."""
        return self._thread.alive()

    def stop(self) -> None:
        self._thread.stop()

    def run_until_idle(self, max_steps: int = 100_000) -> None:
        """Drive the engine from the calling thread (tests, benchmarks; no threads started) until
        nothing is left. Adapter loads happen inline, between steps."""
        for _ in range(max_steps):
            self.catalog.load_pending()
            if not self.step() and self.scheduler.idle():
                return

    def _fail_running(self) -> None:
        """After a step raised (a bug): fail the running requests, keep serving."""
        for seq in list(self.running):
            self.postprocess.fail(seq, InternalError("internal error while generating"))

    def _observe(self, batch: Batch | None) -> None:
        if self.metrics is not None:
            self.metrics.observe_engine(self, 0 if batch is None else len(batch))

    # ---- for metrics, tests and benchmarks ---------------------------------------------------

    @property
    def running(self) -> list[Sequence]:
        return self.scheduler.running

    @property
    def queue(self):
        return self.scheduler.waiting

    @property
    def spec_stats(self) -> list[int]:
        """[speculative tokens drafted, accepted] so far."""
        return self.postprocess.spec_stats
