"""The HTTP API app: the routers (routes/openai.py, routes/admin.py, routes/ops.py, and any other
module's), the error handlers, and the OpenAPI document (docs/openapi.json).

Every error is an OpenAI error body {"error": {"message", "type", "code", "param"}} with the status
of its ServeError class (errors.py): unknown routes and methods too, and anything unexpected is a
logged 500 that leaves the server serving. Shared state lives in the AppState on `app.state.serve`
and reaches handlers through the dependencies in deps.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraops.serve import schemas
from loraops.serve.deps import AppState, error_response
from loraops.serve.errors import ServeError
from loraops.finetune import routes as fine_tuning
from loraops.serve.routes import admin, ops, openai

log = logging.getLogger("loraops.serve")

ROUTERS = (openai.router, admin.router, ops.router, fine_tuning.router)


def create_app(state: AppState, routers: Iterable[APIRouter] = ()) -> FastAPI:
    """The app over `state`, with our routers and any `routers` more (the same dependencies serve them)."""
    app = FastAPI(title="loraops", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    for router in (*ROUTERS, *routers):
        app.include_router(router)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        err = ServeError(str(e.detail))
        err.status, err.code = e.status_code, "not_found" if e.status_code == 404 else "invalid_request_error"
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        err = ServeError("internal server error")
        err.status, err.code, err.kind = 500, "internal_error", "server_error"
        return error_response(err)

    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                          description="OpenAI-compatible serving of many LoRA adapters on one base model. "
                                      "Errors are OpenAI error bodies; see docs/serving.md.")
        components = doc.setdefault("components", {})
        # FastAPI documents a 422 for parameters it validates; ours are plain strings and the bodies are
        # validated by hand (400), so no route can answer 422.
        for ops in doc["paths"].values():
            for op in ops.values():
                op["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components.setdefault("schemas", {}).update(schemas.components())
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        for path in ("/health", "/ready"):
            doc["paths"][path]["get"]["security"] = []
        app.openapi_schema = doc
    return app.openapi_schema


def openapi_schema() -> dict:
    """The HTTP API's OpenAPI document (docs/openapi.json is this, kept current by a test)."""
    return create_app(AppState(engine=None, tenants=None)).openapi()
