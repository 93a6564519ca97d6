"""The HTTP ingress of `loraops serve --ray`: the single-process server's FastAPI app (auth, tenancy,
limits, OpenAI routes, admin routes, /metrics, /ready, /ui, and with a registry the fine-tuning API,
whose jobs `loraops worker` processes run) over a ClusterEngine, a RemoteLimiter and ClusterMetrics
instead of the local engine, limiter and metrics; plus /admin/cluster.

Each ingress replica tokenizes prompts and compiles response_format grammars itself (it loads the
base's tokenizer, never its weights), refreshes its view of the engine replicas every `view_s`
seconds, and reports its request metrics to SharedState so that any ingress renders all of them.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from fastapi import APIRouter, Depends
from ray import serve

from loraops.serve.cluster.client import ClusterEngine, ClusterView
from loraops.serve.cluster.metrics import ClusterMetrics
from loraops.serve.cluster.shared import RemoteLimiter
from loraops.serve.config import ServeOptions
from loraops.serve.deps import AppState, app_state, require_admin
from loraops.serve.tenancy import Tenants

log = logging.getLogger("loraops.serve")

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/cluster")
async def cluster(state: AppState = Depends(app_state)):
    """Every engine replica as the ingress last saw it: id, process, node, queue, running requests,
    adapters resident (model id -> slot) and the registry's production versions it serves."""
    engine = state.engine
    return {"expected": engine.view.expected, "ready": engine.alive(), "replicas": [
        {"id": s.replica, "pid": s.pid, "node": s.node, "alive": s.alive, "queue": s.queue, "running": s.running,
         "adapters": len(s.models), "resident": s.resident, "production": s.production}
        for _, s in sorted(engine.view.snapshots.items())]}


class RegistryVersions:
    """Does the registry hold version "name@V"? (The engine replica that serves it fetches it.)
    Versions are immutable: a yes is remembered."""

    def __init__(self, remember: int = 4096):
        from loraops.registry import Registry

        self.registry, self.remember = Registry(), remember
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def exists(self, model_id: str) -> bool:
        from loraops.errors import LoraOpsError

        with self._lock:
            if model_id in self._known:
                return True
        try:
            self.registry.resolve(model_id)
        except LoraOpsError:                               # no such adapter or version, or a bad name
            return False
        with self._lock:
            if len(self._known) >= self.remember:
                self._known.clear()
            self._known.add(model_id)
        return True


class Ingress:
    async def __init__(self, opts: ServeOptions, tenants: Tenants | None, engines, shared):
        """opts and tenants: validated by the driver; engines, shared: the deployments' handles."""
        from transformers import AutoConfig, AutoTokenizer

        from loraops.models import resolve_base
        from loraops.serve.server import fine_tuning_service

        self.opts, self.shared = opts, shared
        info = await asyncio.to_thread(resolve_base, opts.base)
        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, info.path)
        vocab = (await asyncio.to_thread(AutoConfig.from_pretrained, info.path)).get_text_config().vocab_size
        self.base_path = str(info.path)             # the promotion gate evaluates on it
        self.ingress_id = serve.get_replica_context().replica_id.unique_id
        c = opts.cluster
        self.view = ClusterView(engines, c.replicas)
        self.metrics = ClusterMetrics(self.ingress_id)
        self.metrics.view = self.view
        engine = ClusterEngine(engines, shared, self.view, tokenizer, info.name, vocab, c.view_s, c.affinity,
                               self.metrics)
        versions = RegistryVersions() if opts.registry else None
        finetune = None if versions is None else fine_tuning_service(opts, info, tokenizer, versions.registry,
                                                                     versions.exists)
        self.state = AppState(engine, tenants, opts.admin_key, self.metrics, RemoteLimiter(shared),
                              pin_version=versions.exists if versions is not None else None,
                              metrics_key=opts.metrics_key, limits=opts.http, finetune=finetune)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    def __serve_build_asgi_app__(self):
        from loraops.serve.api import create_app
        from loraops.serve.server import mount_dashboard

        app = create_app(self.state, routers=[router])
        if self.opts.registry:
            mount_dashboard(app, self.opts.admin_key, self.metrics, self.base_path)
        return app

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            try:
                await self.view.refresh()
                self.metrics.ingresses = await self.shared.report.remote(self.ingress_id,
                                                                         self.metrics.request_families())
                if failing:
                    log.info("ingress %s: the replica view is current again", self.ingress_id)
                failing = False
            except Exception as e:                         # keep the last view; /ready says when it is stale
                if not failing:
                    log.warning("ingress %s: refreshing the replica view failed (%s: %s); retrying every %gs",
                                self.ingress_id, type(e).__name__, e, self.opts.cluster.view_s)
                failing = True
            await asyncio.sleep(self.opts.cluster.view_s)

    async def check_health(self) -> None:
        if self._refresher.done():
            raise RuntimeError("the replica view refresher stopped")
