"""`loraops serve`: build the engine and the app from options, then run uvicorn.

Adapters given on the command line that fail to load (corrupt files, another base, DoRA, or a
failure nobody foresaw) are logged with the reason and skipped: the server starts and serves
everything else. Likewise one bad registry version never stops the others from being served.
With a registry, every adapter's production version is served under its name and the registry is
polled for promotions and rollbacks (hot reload; running requests finish on their version); a
request for "name@V" serves that exact (immutable) version, registered on first use. With a
registry the server also takes fine-tuning jobs (loraops.finetune), and `--workers N` runs them.
An encoder base (`build_engine`) is served for classification instead (serve/encoder.py): the
same catalog, registry, tenancy and limits, `POST /v1/classifications`, no fine-tuning jobs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict

from loraops.errors import ConfigError, LoraOpsError
from loraops.serve.config import ServeOptions, check_options
from loraops.serve.engine import Engine

log = logging.getLogger("loraops.serve")


class RegistryWatcher:
    """Serve each adapter's production version under its name; poll for changes. Serve pinned
    versions "name@V" on demand, keeping at most `max_pinned` of them registered."""

    def __init__(self, engine: Engine, poll_s: float, max_pinned: int = 64):
        from loraops.registry.service import Registry

        self.engine, self.poll_s, self.registry = engine, poll_s, Registry()
        self.current: dict[str, tuple[int, str]] = {}
        self.refused: dict[str, tuple[int, str]] = {}            # production versions that failed to load
        self.max_pinned = max_pinned
        self.pinned: OrderedDict[str, None] = OrderedDict()     # ids registered by `pin`, least recent first
        self._pin_lock = threading.Lock()
        self._stop = threading.Event()

    def pin(self, model_id: str) -> bool:
        """Register registry version `model_id` ("name@V", any stage: versions are immutable) in the
        engine under that id, if not yet there. False if the registry has no such version or it
        cannot be served here (logged). Called from API worker threads; blocks on the registry."""
        from loraops.errors import NotFoundError

        with self._pin_lock:                               # one fetch per id, even under a burst
            if self.engine.has_model(model_id):
                if model_id in self.pinned:
                    self.pinned.move_to_end(model_id)       # recently used
                return True                                # else registered another way: not ours to evict
            self.pinned.pop(model_id, None)                # removed meanwhile (admin route)
            try:
                path = self.registry.fetch(model_id)
                self.engine.add_adapter(model_id, str(path))
            except NotFoundError:
                return False
            except Exception as e:                         # one bad version: not served, nothing else hurt
                log.error("registry adapter %s not served: %s", model_id, e, exc_info=not isinstance(e, LoraOpsError))
                return False
            self.pinned[model_id] = None
            self.pinned.move_to_end(model_id)
            log.info("serving %s (pinned version)", model_id)
            # A bound on what clients can make resident in the catalog: the least recently requested
            # pinned version goes (its running requests finish; waiting ones get 404, see remove_adapter).
            while len(self.pinned) > self.max_pinned:
                old, _ = self.pinned.popitem(last=False)
                self.engine.remove_adapter(old)
                log.info("%s: no longer served (pinned-version cap %d)", old, self.max_pinned)
            return True

    def sync(self) -> None:
        versions = self.registry.production_versions()
        for name, (version, digest) in versions.items():
            if (version, digest) in (self.current.get(name), self.refused.get(name)):
                continue                                   # versions are immutable: a failed one stays failed
            try:
                path = self.registry.fetch(f"{name}@{version}")
                self.engine.add_adapter(name, str(path))
                self.current[name] = (version, digest)
                log.info("serving %s@%d (production)", name, version)
            except Exception as e:                         # one bad version: the others are still synced
                self.refused[name] = (version, digest)
                log.error("registry adapter %s@%d not served%s: %s", name, version,
                          "; still serving the previous version" if name in self.current else "", e,
                          exc_info=not isinstance(e, LoraOpsError))
        for name in set(self.current) - set(versions):
            self.engine.remove_adapter(name)
            del self.current[name]
            log.info("%s has no production version any more: no longer served", name)

    def start(self) -> None:
        self.sync()
        threading.Thread(target=self._run, name="loraops-registry", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except Exception:
                log.exception("registry poll failed; keeping the adapters being served")

    def stop(self) -> None:
        self._stop.set()
        self.registry.close()


def make_engine(opts: ServeOptions, metrics, adapters: dict[str, tuple[str, bool]] | None = None):
    """-> (engine, registry watcher or None), not started: the base loaded once (int8 if asked), the
    command-line adapters and `adapters` (name -> (path, force)) registered. The single-process
    server and every engine replica of `--ray` (serve/cluster/replica.py) are built by this."""
    engine = build_engine(opts, metrics)
    wanted = {name: (path, False) for name, path in opts.adapters.items()} | (adapters or {})
    for name, (path, force) in wanted.items():
        try:
            engine.add_adapter(name, path, force)
            log.info("adapter %s loaded from %s", name, path)
        except Exception as e:                             # one bad adapter must not stop the server
            log.error("adapter %s not loaded: %s", name, e, exc_info=not isinstance(e, LoraOpsError))
    watcher = RegistryWatcher(engine, opts.registry_poll_s) if opts.registry else None
    return engine, watcher


def build(opts: ServeOptions):
    """-> (app, engine, watcher or None). Loads the base once and the command-line adapters."""
    from loraops.serve.api import AppState, create_app
    from loraops.serve.metrics import ServeMetrics
    from loraops.serve.tenancy import Tenants

    check_options(opts)
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
    tenants = Tenants.load(opts.tenants) if opts.tenants else None
    if tenants is None:
        log.warning("--insecure-no-auth: every client can use every model; do not expose this server")
    metrics = ServeMetrics()
    engine, watcher = make_engine(opts, metrics)
    admin_key = opts.admin_key or os.environ.get("LORAOPS_ADMIN_KEY") or None
    metrics_key = opts.metrics_key or os.environ.get("LORAOPS_METRICS_KEY") or None
    finetune = (fine_tuning_service(opts, engine.base.info, engine.tokenizer, watcher.registry, watcher.pin)
                if opts.registry and engine.task == "generation" else None)
    app = create_app(AppState(engine, tenants, admin_key, metrics,
                              pin_version=watcher.pin if watcher is not None else None,
                              metrics_key=metrics_key, limits=opts.http, finetune=finetune))
    if opts.registry:
        # The gate evaluates on the served base: its directory (absolute), never its display name,
        # which for `--base DIR` is only DIR's last component.
        mount_dashboard(app, admin_key, metrics, str(engine.base.info.path))
    return app, engine, watcher


def build_engine(opts: ServeOptions, metrics) -> Engine:
    """An Engine for a causal LM, or an EncoderEngine (classification) when `--base` is an encoder
    checkpoint (models.is_encoder: config.json names a *ForSequenceClassification or *ForMaskedLM)."""
    from loraops.models import is_encoder, load_base, load_encoder_base

    if is_encoder(opts.base):
        from loraops.serve.encoder import EncoderEngine

        if opts.quantize or opts.workers:
            raise ConfigError("--quantize and --workers are for causal-LM bases; "
                              f"{opts.base} is an encoder, served for classification")
        log.info("%s is an encoder: serving POST /v1/classifications", opts.base)
        return EncoderEngine(load_encoder_base(opts.base), opts.engine, metrics)
    base = load_base(opts.base)
    if opts.quantize == "int8":
        from loraops.models.quantize import quantize_for_inference_

        log.info("int8: quantized %d linear layers (LoRA stays fp32)",
                 len(quantize_for_inference_(base.model, base.tokenizer)))
    return Engine(base, opts.engine, metrics)


def fine_tuning_service(opts: ServeOptions, info, tokenizer, registry, pin):
    """The fine-tuning API's service: jobs for this server's base (`info`: models.BaseInfo), their
    models served through `pin` ("name@V" -> servable?: the registry watcher's pinned versions)."""
    from pathlib import Path

    from loraops.finetune import FineTuneStore, FineTuning

    spec = str(Path(opts.base).resolve()) if Path(opts.base).exists() else opts.base  # workers may run elsewhere
    return FineTuning(FineTuneStore(), registry, info.name, spec, info.fingerprint, tokenizer, pin,
                      opts.max_upload_bytes, opts.engine.max_rank)


def mount_dashboard(app, admin_key: str | None, metrics, base: str) -> None:
    """/ui: the registry dashboard, for the admin key (read-write) or LORAOPS_DASHBOARD_KEY (read-only).
    Without either key there is no one to sign in, so it is not mounted."""
    from loraops.evals import GateConfig, PromotionGate
    from loraops.registry import Registry
    from loraops.web import DashboardKeys, dashboard_router
    from loraops.web.registry_source import RegistrySource

    read_key = os.environ.get("LORAOPS_DASHBOARD_KEY")
    if not admin_key and not read_key:
        log.warning("dashboard not mounted: set an admin key or LORAOPS_DASHBOARD_KEY to use /ui")
        return
    keys = DashboardKeys(admin_keys=[admin_key] if admin_key else [], read_keys=[read_key] if read_key else [])
    ft = app.state.serve.finetune
    source = RegistrySource(Registry(), gate=PromotionGate(GateConfig(), base=base), stats=metrics.live,
                            jobs=ft.store if ft is not None else None)
    app.include_router(dashboard_router(source, keys))


def run(opts: ServeOptions) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM: both shut uvicorn down gracefully, then stop the
    registry watcher and the engine, and return (exit code 0)."""
    import signal

    import uvicorn

    app, engine, watcher = build(opts)
    engine.start()
    if watcher is not None:
        watcher.start()
    workers = None
    if opts.workers:
        from loraops.finetune import WorkerPool

        workers = WorkerPool(opts.workers)
        workers.start()
    # uvicorn handles SIGINT and SIGTERM itself (graceful shutdown), then re-raises the signal it got
    # under the handler that was there before. For SIGINT that is a KeyboardInterrupt, which uvicorn.run
    # swallows; for SIGTERM the default handler would kill the process before the `finally` below.
    # Make SIGTERM a KeyboardInterrupt too, so both ways out clean up. (Signal handlers: main thread only.)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        uvicorn.run(app, host=opts.host, port=opts.port, log_level="info", timeout_graceful_shutdown=5)
    except KeyboardInterrupt:  # a signal outside uvicorn's own handling (just before it started): a stop too
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if workers is not None:
            workers.stop()             # their job processes stop; the jobs go back to the queue
        if watcher is not None:
            watcher.stop()
        engine.stop()
