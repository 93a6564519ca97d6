"""The serving engine: one base model, many adapters, iteration-level (continuous) batching.

Each step packs the new tokens of every running sequence into one row — a whole prompt for a
sequence that just joined (its prefill), one token for the others (decode), followed for greedy
requests by a few guessed tokens that the same forward verifies (speculate.py) — and runs one forward:
MultiLoRALinear applies each token's adapter (lora_kernels.py) — or, for a composed request
("a:0.7+b:0.3", see `parse_model`), the weighted sum of its adapters — paged_attention keeps each
sequence's keys in the block cache (kv.py); the head (head.py) gives greedy rows their token
(int8 logits screened, checked in fp32) and the others their logits. Then every sequence takes its
next token; finished sequences leave at once and waiting ones join, round-robin across tenants
(scheduler.py).

Threads: the API thread calls the public methods (`submit`, `cancel`, `add_adapter`, ...), which
only touch the queue under a lock; the engine thread owns the model, the slot pool and the cache;
the loader thread reads and validates adapter files off the request path and hands the result to
the engine thread, which copies it into a slot between two steps.
"""

from __future__ import annotations

import itertools
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass

import torch

from loraops.errors import LoraOpsError
from loraops.lora import Adapter, read_adapter
from loraops.models import LoadedBase, check_base
from loraops.serve import kv
from loraops.serve.config import EngineConfig
from loraops.serve.context import ForwardContext, SeqSpan
from loraops.serve.errors import (AdapterUnavailableError, BadRequestError, ContextLengthError, InternalError,
                                  ModelNotFoundError, ServeError)
from loraops.serve.gemm import install_decode_linears
from loraops.serve.head import install_head
from loraops.serve.layers import install
from loraops.serve.sampling import SamplingParams, TextStream, make_generator, sample
from loraops.serve.scheduler import FairQueue, Sequence
from loraops.serve.speculate import DraftLength, NgramDrafter, share_budget

log = logging.getLogger("loraops.serve")

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[0-9]{1,9})?$")
WEIGHT = re.compile(r"^-?([0-9]{1,6}(\.[0-9]{0,12})?|\.[0-9]{1,12})$")   # plain decimals: no inf, nan, 1e9
MAX_PARTS, MAX_WEIGHT = 4, 4.0


@dataclass
class TokenEvent:
    text: str
    token_id: int


@dataclass
class DoneEvent:
    finish_reason: str            # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ErrorEvent:
    error: ServeError


@dataclass
class AdapterEntry:
    """A servable adapter. `key` names its weights in the slot pool; re-adding a model id gives a new
    key, so sequences already running keep the weights they started with."""

    model_id: str
    path: str
    key: str
    rank: int


def check_model_id(model_id: str) -> None:
    if not isinstance(model_id, str) or not MODEL_ID.match(model_id):
        raise BadRequestError(f"invalid model name {str(model_id)[:80]!r}: use letters, digits, '.', '_', "
                              f"'-' and an optional @VERSION", param="model")


def is_composition(model_id: str) -> bool:
    return isinstance(model_id, str) and ("+" in model_id or ":" in model_id)


def parse_model(model_id: str) -> list[tuple[str, float]]:
    """A model id -> its (adapter id, weight) parts. "a" -> [("a", 1.0)] (or the base name);
    "a:0.7+b@2:0.3" -> [("a", 0.7), ("b@2", 0.3)]: 2-4 distinct parts NAME[@VERSION]:WEIGHT, each
    weight a plain decimal in [-4, 4]. Raises BadRequestError (param "model")."""
    if not is_composition(model_id):
        check_model_id(model_id)
        return [(model_id, 1.0)]
    parts = model_id.split("+")
    if not 2 <= len(parts) <= MAX_PARTS:
        raise BadRequestError(f"a composition has 2 to {MAX_PARTS} parts joined by '+', got {len(parts)}",
                              param="model")
    out = []
    for part in parts:
        name, colon, weight = part.rpartition(":")
        if not colon or not MODEL_ID.match(name):
            raise BadRequestError(f"composition part {part[:80]!r} must look like NAME[@VERSION]:WEIGHT, "
                                  f"e.g. 'my-adapter:0.5'", param="model")
        if not WEIGHT.match(weight) or abs(float(weight)) > MAX_WEIGHT:
            raise BadRequestError(f"composition part {part[:80]!r}: the weight must be a decimal number in "
                                  f"[-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]", param="model")
        if any(name == seen for seen, _ in out):
            raise BadRequestError(f"adapter {name!r} appears twice in the composition", param="model")
        out.append((name, float(weight)))
    return out


def model_label(model_id: str) -> str:
    """The metrics label of a model id. A composition is labelled by its sorted part names without
    weights ("b:0.3+a:0.7" -> "a+b"): weights are free-form client input, and a label per weight
    would let clients grow the series count without bound."""
    if not is_composition(model_id):
        return model_id
    return "+".join(sorted(name for name, _ in parse_model(model_id)))


def pack_terms(rows: list[tuple[list[int], list[float], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence (slots of its terms, their weights, its token count) -> slots: [J, T] and
    weights: [J, T] over the packed tokens, J = the most terms of any sequence (at least 1).
    A sequence with fewer terms gets slot 0 (no adapter) in the others."""
    n_terms = max([len(slots) for slots, _, _ in rows] + [1])
    slots = [[s[j] if j < len(s) else 0 for s, _, n in rows for _ in range(n)] for j in range(n_terms)]
    weights = [[w[j] if j < len(w) else 0.0 for _, w, n in rows for _ in range(n)] for j in range(n_terms)]
    return torch.tensor(slots, dtype=torch.long), torch.tensor(weights)


class Engine:
    def __init__(self, base: LoadedBase, config: EngineConfig | None = None, metrics=None):
        self.config = config = config or EngineConfig()
        self.base, self.model, self.tokenizer = base, base.model, base.tokenizer
        self.base_name = base.info.name
        self.metrics = metrics
        self.pool, self.lora_layers = install(self.model, config.max_slots, config.max_rank)
        install_decode_linears(self.model)                 # after install: it wraps nn.Linear paths
        self.head = install_head(self.model, self.tokenizer) if config.screen_head else None
        kv.register()
        self.model.set_attn_implementation(kv.ATTN_NAME)
        self.attn_modules = [m for m in self.model.modules()
                             if hasattr(m, "layer_idx") and type(m).__name__.endswith("Attention")]
        mc = self.model.config.get_text_config()
        head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
        dtype = next(self.model.parameters()).dtype
        self.cache = kv.BlockKVCache(mc.num_hidden_layers, kv_heads, head_dim, config.max_kv_tokens,
                                     config.block_size, dtype)
        self.max_context = min(getattr(mc, "max_position_embeddings", 2048), self.cache.capacity_tokens)
        self.vocab_size = self.model.config.vocab_size  # the head may be an Int8Linear (no .weight)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.queue = FairQueue(config.max_queue)
        self.running: list[Sequence] = []
        self._catalog: dict[str, AdapterEntry] = {}
        self._keys = itertools.count(1)
        self._ids = itertools.count(1)
        self._inbox: queue.Queue = queue.Queue()          # (key, Adapter | Exception, seconds, preload)
        self._loads: queue.Queue = queue.Queue()          # (key, path) for the loader
        self._loading: set[str] = set()
        self._unload: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._threads_wanted = torch.get_num_threads()
        self.spec_stats = [0, 0]                          # speculative tokens drafted, accepted

    # ---- adapters (any thread) ---------------------------------------------------------------

    def read_checked(self, path: str, force: bool = False) -> Adapter:
        """Read an adapter directory and check it fits this base and the slot pool (raises LoraOpsError)."""
        adapter = read_adapter(path)
        check_base(adapter, self.base_name, self.base.info.fingerprint, force)
        self.pool.check(adapter)
        return adapter

    def add_adapter(self, model_id: str, path: str, force: bool = False) -> AdapterEntry:
        """Validate and register `model_id` -> `path`; its weights go into a slot if one is free.
        Replacing an existing id is a hot swap: running requests finish on the old weights."""
        check_model_id(model_id)
        if model_id == self.base_name:
            raise BadRequestError(f"{model_id!r} is the base model's name", param="name")
        adapter = self.read_checked(path, force)
        entry = AdapterEntry(model_id, str(path), f"{model_id}#{next(self._keys)}",
                             max(m.r for m in adapter.modules.values()))
        with self._lock:
            old = self._catalog.get(model_id)
            self._catalog[model_id] = entry
            if old is not None:
                self._unload.add(old.key)
                for seq in self.queue.waiting():           # not started yet: start on the new weights
                    seq.terms = [(entry.key if k == old.key else k, w) for k, w in seq.terms]
            self._inbox.put((entry.key, adapter, 0.0, True))
            self._wake.notify()
        return entry

    def remove_adapter(self, model_id: str) -> bool:
        """Stop serving `model_id`. Waiting requests for it fail with 404; running ones finish."""
        with self._lock:
            entry = self._catalog.pop(model_id, None)
            if entry is None:
                return False
            self._unload.add(entry.key)
            for seq in [s for s in self.queue.waiting() if entry.key in s.keys]:
                self.queue.remove(seq)
                seq.sink(ErrorEvent(ModelNotFoundError(f"the model {model_id!r} does not exist", "model")))
            self._wake.notify()
        return True

    def models(self) -> list[AdapterEntry]:
        with self._lock:
            return list(self._catalog.values())

    def resident(self) -> dict[str, int]:
        """model id -> slot of the adapters whose current weights are in the pool."""
        with self._lock:
            res = self.pool.resident()
            return {e.model_id: res[e.key] for e in self._catalog.values() if e.key in res}

    def has_model(self, model_id: str) -> bool:
        """A served model id: the base or a registered adapter (never a composition)."""
        return model_id == self.base_name or model_id in self._catalog

    # ---- requests (any thread) ---------------------------------------------------------------

    def check_lengths(self, prompt_tokens: int, max_tokens: int) -> None:
        if max_tokens > self.config.max_tokens_cap:
            raise BadRequestError(f"max_tokens={max_tokens} exceeds this server's cap of "
                                  f"{self.config.max_tokens_cap}", param="max_tokens")
        if prompt_tokens == 0:
            raise BadRequestError("the prompt is empty", param="prompt")
        if prompt_tokens + max_tokens > self.max_context:
            raise ContextLengthError(
                f"this model's maximum context length is {self.max_context} tokens, but you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
                f"completion); shorten the prompt or lower max_tokens", param="max_tokens")

    def submit(self, tenant: str, model_id: str, prompt: list[int], params: SamplingParams, sink,
               constraint=None) -> Sequence:
        """Queue a request for a model id or a composition ("a:0.7+b:0.3", see `parse_model`).
        Raises ModelNotFoundError, BadRequestError or OverloadedError (queue full).
        `constraint` (grammar.RowConstraint) restricts the tokens this request may sample."""
        parts = parse_model(model_id)
        if len(parts) > self.pool.max_slots:               # every part needs its own slot at once
            raise BadRequestError(f"a composition of {len(parts)} adapters needs {len(parts)} slots; this "
                                  f"server has {self.pool.max_slots}", param="model")
        self.check_lengths(len(prompt), params.max_tokens)
        with self._lock:
            terms = self._terms(parts)
            seq = Sequence(next(self._ids), tenant, model_id, terms, list(prompt), params, sink,
                           TextStream(self.tokenizer, params.stop), make_generator(params),
                           constraint=constraint)
            self.queue.push(seq)
            self._wake.notify()
        return seq

    def _terms(self, parts: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """(model id, weight) parts -> (slot-pool key, weight) terms; the base alone has none."""
        if parts == [(self.base_name, 1.0)]:
            return []
        terms = []
        for name, weight in parts:
            if name == self.base_name:
                raise BadRequestError("the base model cannot be part of a composition", param="model")
            if name not in self._catalog:
                raise ModelNotFoundError(f"the model {name!r} does not exist", "model")
            terms.append((self._catalog[name].key, weight))
        return terms

    def cancel(self, seq: Sequence) -> None:
        """The client went away: drop the sequence whether it waits or runs."""
        with self._lock:
            seq.cancelled = True
            self.queue.remove(seq)
            self._wake.notify()

    def queue_depth(self) -> int:
        return len(self.queue)

    # ---- the loop (engine thread) ------------------------------------------------------------

    def start(self) -> None:
        self._threads_wanted = torch.get_num_threads()
        for target, name in ((self._loop, "loraops-engine"), (self._loader, "loraops-loader")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def alive(self) -> bool:
        """The engine and loader threads are running."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stop.set()
        self._loads.put(None)
        with self._lock:
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    def _loop(self) -> None:
        # OpenMP's thread count is per OS thread: adopt the one set (torch.set_num_threads) by the starter.
        torch.set_num_threads(self._threads_wanted)
        while not self._stop.is_set():
            try:
                if not self.step():
                    with self._lock:
                        if self._inbox.empty() and not self.running:
                            self._wake.wait(timeout=0.05)
            except Exception:                              # a bug must not kill the server silently
                log.exception("engine step failed; failing the running requests")
                for seq in list(self.running):
                    seq.sink(ErrorEvent(InternalError("internal error while generating")))
                    self._finish(seq)

    def _loader(self) -> None:
        while (job := self._loads.get()) is not None:
            self._load(*job)

    def _load(self, key: str, path: str) -> None:
        t0 = time.perf_counter()
        try:
            result = self.read_checked(path)
        except (LoraOpsError, OSError) as e:
            result = e
        self._inbox.put((key, result, time.perf_counter() - t0, False))
        with self._lock:
            self._wake.notify()

    def run_until_idle(self, max_steps: int = 100_000) -> None:
        """Drive the engine from the calling thread (tests, benchmarks; no threads started) until
        nothing is left. Adapter loads happen inline, between steps."""
        for _ in range(max_steps):
            while not self._loads.empty():
                self._load(*self._loads.get_nowait())
            if not self.step() and not self.running and not len(self.queue) and self._loads.empty():
                return

    def step(self) -> bool:
        """Apply finished loads, admit waiting requests, run one forward. False if nothing ran."""
        self._apply_loads()
        self._admit()
        for seq in [s for s in self.running if s.cancelled]:
            self._finish(seq)
        if not self.running:
            self._observe()
            return False
        batch = list(self.running)
        drafts = self._drafts(batch)
        ids, pos, spans, keep = [], [], [], []
        for seq, draft in zip(batch, drafts):
            new = seq.prompt if seq.computed == 0 else seq.output[-1:] + draft
            lo = len(ids)
            ids += new
            pos += range(seq.computed, seq.computed + len(new))
            end = seq.computed + len(new)
            spans.append(SeqSpan(lo, len(ids), seq.computed, self.cache.slots(seq.id, seq.computed, end),
                                 self.cache.slots(seq.id, 0, end)))
            keep += range(len(ids) - 1 - len(draft), len(ids))     # the last token's logits, and each draft's
        slots, weights = pack_terms([(s.slots, [w for _, w in s.terms], sp.hi - sp.lo)
                                     for s, sp in zip(batch, spans)])
        ctx = ForwardContext.build(slots, spans, self.cache, weights)
        # Greedy rows without a constraint need only their argmax: screened by the head when it can
        # (head.py), else one batched argmax over the fp32 logits (2x faster than one call per row).
        plain = [s.params.greedy and s.constraint is None for s, d in zip(batch, drafts) for _ in range(len(d) + 1)]
        if self.head is not None and any(plain):
            ctx.greedy_rows = torch.tensor(plain)
        self._bind(ctx)
        try:
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]),
                                    use_cache=False, logits_to_keep=torch.tensor(keep)).logits[0]  # [K or K - G, V]
        finally:
            self._bind(None)
        # Per kept row: its greedy token (None: the row samples) and its row in `logits`.
        if ctx.greedy_rows is not None:
            greedy = iter(ctx.greedy_tokens.tolist())
            others = iter(range(len(plain)))
            argmax = [next(greedy) if p else None for p in plain]
            logit_row = [None if p else next(others) for p in plain]
        else:
            top = logits.argmax(-1).tolist() if any(plain) else [None] * len(plain)
            argmax = [t if p else None for t, p in zip(top, plain)]
            logit_row = list(range(len(plain)))
        row = 0
        for seq, sp, draft in zip(batch, spans, drafts):
            rows = range(row, row + len(draft) + 1)
            row += len(draft) + 1
            seq.computed += sp.hi - sp.lo - len(draft)
            try:
                accepted = self._verify(seq, logits, rows, draft, argmax, logit_row)
            except Exception:                              # one request's failure is not the batch's
                log.exception("request %d failed while sampling", seq.id)
                seq.sink(ErrorEvent(InternalError("internal error while generating")))
                self._finish(seq)
                continue
            seq.computed += accepted
            if draft:
                seq.draft_len.update(len(draft), accepted)
                self.spec_stats[0] += len(draft)
                self.spec_stats[1] += accepted
        self._observe(len(batch))
        return True

    def _drafts(self, batch: list[Sequence]) -> list[list[int]]:
        """Each decoding sequence's speculative draft (see speculate.py): up to its DraftLength,
        within its remaining max_tokens, and within the step's token budget, shared so that every
        sequence's first guesses come before anyone's later ones (`share_budget`)."""
        drafts: list[list[int]] = [[] for _ in batch]
        budget = self.config.speculate_step_tokens - sum(len(s.prompt) if s.computed == 0 else 1 for s in batch)
        if budget <= 0:                                    # no room: paused sequences keep their pause
            return drafts
        guesses = {i: s.drafter.propose(min(s.draft_len.next(), s.params.max_tokens - len(s.output) - 1))
                   for i, s in enumerate(batch) if s.drafter is not None and s.computed > 0}
        give = share_budget([len(g) for g in guesses.values()], budget)
        for (i, guess), k in zip(guesses.items(), give):
            drafts[i] = guess[:k]
        return drafts

    def _verify(self, seq: Sequence, logits: torch.Tensor, rows: range, draft: list[int],
                argmax: list[int | None], logit_row: list[int | None]) -> int:
        """rows: the kept positions after the sequence's last token and after each draft token
        ([len(draft) + 1]); argmax[r]: a greedy row's token (None for rows that sample or follow a
        grammar); logits[logit_row[r]]: the other rows' logits. Emits tokens as plain decoding would — row i gives token i —
        while token i equals draft[i] (so row i + 1 saw the right input) and the sequence goes on.
        Returns how many draft tokens were accepted (their keys/values are valid in the cache)."""
        for i, r in enumerate(rows):
            if argmax[r] is not None:
                token = argmax[r]
            else:
                row = logits[logit_row[r]]
                if seq.constraint is None:
                    token = sample(row, seq.params, seq.generator)
                else:                                      # masked, and closes within max_tokens
                    token = seq.constraint.choose(row, lambda x: sample(x, seq.params, seq.generator),
                                                  seq.params.max_tokens - len(seq.output))
            self._emit(seq, token)
            if i == len(draft) or token != draft[i] or seq not in self.running:
                return i
        return len(draft)

    def _bind(self, ctx: ForwardContext | None) -> None:
        for m in self.lora_layers:
            m.serve_ctx = ctx
        for m in self.attn_modules:
            m.serve_ctx = ctx
        if self.head is not None:
            self.head.serve_ctx = ctx

    def _apply_loads(self) -> None:
        while True:
            try:
                key, result, seconds, preload = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._loading.discard(key)
            with self._lock:
                current = any(e.key == key for e in self._catalog.values())
            if not current:
                continue
            if isinstance(result, Exception):
                log.error("adapter %s failed to load: %s", key.split("#")[0], result)
                name = key.split("#")[0]
                self._fail_waiting(key, AdapterUnavailableError(f"adapter {name!r} failed to load", "model"))
                continue
            if preload and len(self.pool.resident()) >= self.pool.max_slots:
                continue                                   # registered; loads on first use
            if self.pool.load(key, result) is None:
                self._inbox.put((key, result, seconds, preload))   # every slot pinned: try next step
                break
            if self.metrics is not None and not preload:
                self.metrics.adapter_load.observe(seconds)
        with self._lock:
            for key in list(self._unload):
                if self.pool.unload(key):
                    self._unload.discard(key)

    def _fail_waiting(self, key: str, error: ServeError) -> None:
        with self._lock:
            for seq in [s for s in self.queue.waiting() if key in s.keys]:
                self.queue.remove(seq)
                seq.sink(ErrorEvent(error))

    def _ready(self, seq: Sequence, budget: list[int]) -> bool:
        # A prompt longer than the whole per-step budget may still go, alone in its step.
        over_budget = len(seq.prompt) > budget[0] and budget[0] < self.config.max_prefill_tokens
        if seq.cancelled or not self.cache.can_reserve(seq.budget) or over_budget:
            return False
        # Every part of a composition must be resident at once; each missing one loads off this thread.
        ready = True
        for key in seq.keys:
            if not seq.counted_lookup:                      # a hit or a miss once per request and part
                slot = self.pool.lookup(key)
            else:
                slot = self.pool.resident().get(key)
            if slot is None and key not in self._loading:
                entry = next((e for e in self._catalog.values() if e.key == key), None)
                if entry is not None:
                    self._loading.add(key)
                    self._loads.put((key, entry.path))
            ready = ready and slot is not None
        seq.counted_lookup = True
        return ready

    def _admit(self) -> None:
        budget = [self.config.max_prefill_tokens]
        with self._lock:
            while len(self.running) < self.config.max_batch:
                seq = self.queue.pick(lambda s: self._ready(s, budget))
                if seq is None:
                    break
                budget[0] -= len(seq.prompt)
                assert self.cache.reserve(seq.id, seq.budget)
                seq.slots = [self.pool.acquire(k) for k in seq.keys]
                if self.config.speculate > 0 and seq.params.greedy:
                    seq.drafter = NgramDrafter(seq.prompt)
                    seq.draft_len = DraftLength(self.config.speculate)
                self.running.append(seq)

    def _emit(self, seq: Sequence, token: int) -> None:
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
            if self.metrics is not None:
                self.metrics.ttft.labels(model_label(seq.model), seq.tenant).observe(now - seq.arrived)
        seq.output.append(token)
        if seq.drafter is not None:
            seq.drafter.extend([token])
        finish = None
        if token in self.eos_ids:
            text, finish = seq.stream.flush(), "stop"
        else:
            text = seq.stream.push(token)
            if seq.constraint is not None:
                seq.constraint.advance(token)
            if seq.stream.stopped or (seq.constraint is not None and seq.constraint.done):
                text, finish = text + seq.stream.flush(), "stop"
            elif len(seq.output) >= seq.params.max_tokens:
                text, finish = text + seq.stream.flush(), "length"
        seq.sink(TokenEvent(text, token))
        if finish is not None:
            if self.metrics is not None and len(seq.output) > 1:
                self.metrics.tpot.labels(model_label(seq.model), seq.tenant).observe(
                    (now - seq.first_token_at) / (len(seq.output) - 1))
            seq.sink(DoneEvent(finish, len(seq.prompt), len(seq.output)))
            self._finish(seq)

    def _finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            self.cache.release(seq.id)
            for slot in seq.slots:
                self.pool.unpin(slot)

    def _observe(self, batch: int = 0) -> None:
        if self.metrics is not None:
            self.metrics.observe_engine(self, batch)
