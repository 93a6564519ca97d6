"""Health, readiness and Prometheus metrics.

/health is open (the process is up). /ready is open too but says only ready / not ready; the base
name and adapter count need an operator key (the metrics key or the admin key). /metrics needs an
operator key: its series name every tenant and adapter, which another tenant must not learn.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from loraops.serve import schemas
from loraops.serve.deps import AppState, app_state, is_operator, require_operator

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=schemas.Health)
async def health():
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready", response_model=schemas.Ready, response_model_exclude_none=True,
            responses={503: {"model": schemas.Ready, "description": "Not ready"}})
async def ready(request: Request, state: AppState = Depends(app_state)):
    """The engine and its loader run; details only for an operator key."""
    if not state.engine.alive():
        return JSONResponse({"status": "not ready"}, status_code=503)
    if not is_operator(request):
        return {"status": "ready"}
    return {"status": "ready", "base": state.engine.base_name, "adapters": len(state.engine.models())}


@router.get("/metrics", dependencies=[Depends(require_operator)], response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}, **schemas.errors(401)})
async def prometheus(state: AppState = Depends(app_state)):
    """Prometheus metrics (per model and tenant, and the engine's); needs the metrics or admin key."""
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
