"""The adapter catalog: which model ids are served from which files, and the loader thread that
reads them into memory off the request path.

Threads. API threads (and the registry watcher) `register` and `remove` entries; the engine thread
resolves model ids to pool keys at admission (`resolve`), asks for missing adapters (`request`) and,
between two steps, copies finished loads into the slot pool (`apply`). The loader thread only reads
and validates files: it receives `LoadJob`s and answers each with a `Loaded` or a `LoadFailed`,
whatever the file holds — no exception ends it (an unreadable adapter fails the requests waiting for
it, 503 adapter_unavailable, and nothing else).

Each registration gets a fresh pool key ("name#7"), so re-registering a model id is a hot swap:
running sequences keep the slot of the weights they started with, waiting ones resolve to the new
key when they are admitted, and the old weights leave the pool once no sequence pins them.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from loraops.errors import AdapterFormatError, LoraOpsError
from loraops.lora import Adapter, read_adapter
from loraops.models import check_base
from loraops.serve.errors import AdapterUnavailableError, BadRequestError, ModelNotFoundError, ServeError
from loraops.serve.model_ref import ModelRef
from loraops.serve.slots import SlotPool

log = logging.getLogger("loraops.serve")


@dataclass(frozen=True)
class AdapterEntry:
    """A servable adapter. `key` names its weights in the slot pool; `force` (loaded despite a
    base-fingerprint mismatch) is kept so that every later reload of it is forced too."""

    model_id: str          # canonical (ModelRef.id)
    path: str
    key: str
    rank: int
    force: bool = False


@dataclass(frozen=True)
class LoadJob:
    key: str
    path: str
    force: bool


@dataclass(frozen=True)
class Loaded:
    key: str
    adapter: Adapter
    seconds: float
    preload: bool          # registered just now (not asked for by a request): only into a free slot


@dataclass(frozen=True)
class LoadFailed:
    key: str
    error: ServeError      # what the requests waiting for this adapter receive


class AdapterCatalog:
    def __init__(self, pool: SlotPool, base_name: str, fingerprint: str | None,
                 wake: Callable[[], None] = lambda: None, metrics=None,
                 read: Callable[[str], Adapter] = read_adapter, check: Callable[[Adapter], None] | None = None):
        """wake: called when a load finished (the engine thread should look). read: path -> Adapter.
        check: raises if the adapter cannot be served here (default: `pool.check`)."""
        self.pool, self.base_name, self.fingerprint = pool, base_name, fingerprint
        self._wake, self._metrics, self._read = wake, metrics, read
        self._check = check or pool.check
        self._lock = threading.Lock()
        self._entries: dict[str, AdapterEntry] = {}       # model id -> entry
        self._current: dict[str, AdapterEntry] = {}       # pool key -> entry, current registrations only
        self._unload: set[str] = set()                    # keys replaced or removed, still in the pool
        self._keys = itertools.count(1)
        self._jobs: queue.Queue[LoadJob | None] = queue.Queue()
        self._inbox: queue.Queue[Loaded | LoadFailed] = queue.Queue()
        self._loading: set[str] = set()                   # engine thread only
        self._thread: threading.Thread | None = None

    # ---- entries (any thread) ----------------------------------------------------------------

    def read_checked(self, path: str, force: bool = False) -> Adapter:
        """Read an adapter directory and check it fits the base and the slot pool. Raises
        LoraOpsError for anything wrong with it, including failures nobody foresaw."""
        try:
            adapter = self._read(path)
            check_base(adapter, self.base_name, self.fingerprint, force)
            self._check(adapter)
        except LoraOpsError:
            raise
        except Exception as e:                       # a case no reader check foresaw: still only this adapter's
            raise AdapterFormatError(f"cannot read the adapter in {path}: {type(e).__name__}: {e}") from e
        return adapter

    def register(self, model_id: ModelRef | str, path: str, force: bool = False) -> AdapterEntry:
        """Validate the adapter in `path` (on the calling thread) and serve it as `model_id`; its
        weights go into a slot if one is free. Raises BadRequestError or LoraOpsError."""
        ref = model_id if isinstance(model_id, ModelRef) else ModelRef.parse(model_id, single=True, param="name")
        if ref.is_composition:
            raise BadRequestError(f"{ref.id!r} is a composition, not a model", param="name")
        if ref.id == self.base_name:
            raise BadRequestError(f"{ref.id!r} is the base model's name", param="name")
        adapter = self.read_checked(path, force)
        with self._lock:
            entry = AdapterEntry(ref.id, str(path), f"{ref.id}#{next(self._keys)}",
                                 max(m.r for m in adapter.modules.values()), force)
            old = self._entries.get(ref.id)
            if old is not None:
                self._retire(old)
            self._entries[ref.id] = self._current[entry.key] = entry
        self._inbox.put(Loaded(entry.key, adapter, 0.0, preload=True))
        self._wake()
        return entry

    def remove(self, model_id: str) -> AdapterEntry | None:
        """Stop serving `model_id` (canonical). Its weights leave the pool once unpinned."""
        with self._lock:
            entry = self._entries.pop(model_id, None)
            if entry is not None:
                self._retire(entry)
        if entry is not None:
            self._wake()
        return entry

    def _retire(self, entry: AdapterEntry) -> None:
        del self._current[entry.key]
        self._unload.add(entry.key)

    def get(self, model_id: str) -> AdapterEntry | None:
        with self._lock:
            return self._entries.get(model_id)

    def entries(self) -> list[AdapterEntry]:
        with self._lock:
            return list(self._entries.values())

    def served(self, model_id: str) -> bool:
        """A served model id (canonical, ModelRef.id): the base or a registered adapter."""
        return model_id == self.base_name or self.get(model_id) is not None

    def resident(self) -> dict[str, int]:
        """model id -> slot of the adapters whose current weights are in the pool."""
        res = self.pool.resident()
        return {e.model_id: res[e.key] for e in self.entries() if e.key in res}

    def resolve(self, ref: ModelRef) -> list[tuple[str, float]]:
        """A model -> its (pool key, weight) terms: none for the base alone. Raises
        ModelNotFoundError (an unknown part) or BadRequestError (the base inside a composition)."""
        if not ref.is_composition and ref.id == self.base_name:
            return []
        terms = []
        with self._lock:
            for part in ref.parts:
                if part.id == self.base_name:
                    raise BadRequestError("the base model cannot be part of a composition", param="model")
                entry = self._entries.get(part.id)
                if entry is None:
                    raise ModelNotFoundError(f"the model {part.id!r} does not exist", "model")
                terms.append((entry.key, part.weight))
        return terms

    def keys_of(self, ref: ModelRef) -> set[str]:
        """The current pool keys of `ref`'s parts (unknown parts left out)."""
        with self._lock:
            return {e.key for p in ref.parts if (e := self._entries.get(p.id)) is not None}

    # ---- loading (engine thread) -------------------------------------------------------------

    def request(self, key: str) -> None:
        """Ask the loader for a registered adapter that is not resident (once while it loads)."""
        if key in self._loading:
            return
        with self._lock:
            entry = self._current.get(key)
        if entry is not None:
            self._loading.add(key)
            self._jobs.put(LoadJob(key, entry.path, entry.force))

    def apply(self) -> list[LoadFailed]:
        """Copy finished loads into the pool and drop retired weights that are no longer pinned.
        -> the failed loads of current registrations (their waiting requests must fail)."""
        failed = []
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._loading.discard(msg.key)
            with self._lock:
                current = msg.key in self._current
            if not current:
                continue
            if isinstance(msg, LoadFailed):
                failed.append(msg)
                continue
            if msg.preload and len(self.pool.resident()) >= self.pool.max_slots:
                continue                                   # registered; loads on first use
            if self.pool.load(msg.key, msg.adapter) is None:
                self._inbox.put(msg)                       # every slot pinned: try after the next step
                break
            if self._metrics is not None and not msg.preload:
                self._metrics.adapter_load.observe(msg.seconds)
        with self._lock:
            for key in list(self._unload):
                if self.pool.unload(key):                  # False while a running sequence pins it
                    self._unload.discard(key)
        return failed

    def pending(self) -> bool:
        """Loads asked for or finished but not applied yet."""
        return bool(self._loading) or not self._inbox.empty()

    # ---- the loader thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loraops-loader", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def load_pending(self) -> None:
        """Run the queued loads on the calling thread (engines driven without threads: tests, benches)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._inbox.put(self.load(job))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._inbox.put(self.load(job))
            self._wake()

    def load(self, job: LoadJob) -> Loaded | LoadFailed:
        """Read one adapter; never raises."""
        name = job.key.split("#")[0]
        t0 = time.perf_counter()
        try:
            return Loaded(job.key, self.read_checked(job.path, job.force), time.perf_counter() - t0, False)
        except Exception as e:                        # LoraOpsError from read_checked; anything else is a bug
            log.error("adapter %s could not be loaded from %s: %s", name, job.path, e,
                      exc_info=not isinstance(e, LoraOpsError))
            # The reason stays in the log: it names server paths, and the client only needs to know.
            return LoadFailed(job.key, AdapterUnavailableError(
                f"adapter {name!r} could not be loaded; retry later or ask the operator", "model"))
