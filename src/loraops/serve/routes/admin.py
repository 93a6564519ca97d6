"""Admin routes (/admin/, the admin key): list, load and unload adapters at run time."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from loraops.errors import LoraOpsError
from loraops.serve import schemas
from loraops.serve.deps import AppState, app_state, json_body, require_admin
from loraops.serve.model_ref import ModelRef
from loraops.serve.errors import BadRequestError, ModelNotFoundError, ServeError

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class AdapterLoadError(BadRequestError):
    """An adapter directory that cannot be served: corrupt, non-finite, another base, unsupported."""

    code = "adapter_load_failed"


@router.get("/adapters", response_model=schemas.AdapterList, responses=schemas.errors(401))
async def admin_list(state: AppState = Depends(app_state)):
    """Every registered adapter, its rank, and whether (and where) it is resident in the slot pool."""
    engine = state.engine
    resident = engine.resident()
    return {"base": engine.base_name, "adapters": [
        {"name": e.model_id, "path": e.path, "rank": e.rank, "resident": e.model_id in resident,
         "slot": resident.get(e.model_id)} for e in engine.models()]}


@router.post("/adapters", status_code=201, response_model=schemas.AdapterLoaded,
             openapi_extra=schemas.request_body(schemas.AdapterLoad), responses=schemas.errors(400, 401, 413))
async def admin_load(state: AppState = Depends(app_state), body: dict = Depends(json_body)):
    """Validate an adapter directory on the server's disk and serve it under `name` (a hot swap if
    the name is served already: running requests finish on the old weights)."""
    name, path, force = body.get("name"), body.get("path"), body.get("force", False)
    if not isinstance(path, str) or not path:
        raise BadRequestError("path must be a non-empty string", param="path")
    if not isinstance(force, bool):
        raise BadRequestError("force must be true or false", param="force")
    ref = ModelRef.parse(name, single=True, param="name")
    try:
        entry = await run_in_threadpool(state.engine.add_adapter, ref, path, force)
    except ServeError:
        raise
    except LoraOpsError as e:
        raise AdapterLoadError(f"adapter {name!r} cannot be loaded: {e}", param="path") from e
    return {"name": entry.model_id, "path": entry.path, "rank": entry.rank}


@router.delete("/adapters/{name}", response_model=schemas.AdapterDeleted, responses=schemas.errors(400, 401, 404))
async def admin_unload(name: str, state: AppState = Depends(app_state)):
    """Stop serving `name`: requests waiting for it get 404, running ones finish."""
    name = ModelRef.parse(name, single=True, param="name").id
    if not state.engine.remove_adapter(name):
        raise ModelNotFoundError(f"the model {name!r} does not exist", param="name")
    return {"name": name, "deleted": True}
