"""What every route shares: the app state, the OpenAI error body, and FastAPI dependencies for the
caller (tenant, admin, operator) and for a bounded, parsed JSON body.

A router anywhere (routes/openai.py, routes/admin.py, routes/ops.py, or another module's) reaches the
server through these: `state: AppState = Depends(app_state)`, `tenant: Tenant = Depends(tenant)`,
`body: dict = Depends(json_body)`. Nothing here holds global state: the AppState hangs off the app.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from loraops.serve.config import HttpLimits
from loraops.serve.errors import AuthError, ClientClosedError, PayloadTooLargeError, ServeError
from loraops.serve.grammar import GrammarCache
from loraops.serve.limits import Limiter
from loraops.serve.metrics import ServeMetrics
from loraops.serve.protocol import parse_json
from loraops.serve.tenancy import ANONYMOUS, Tenant, Tenants, digest

if TYPE_CHECKING:
    from loraops.serve.engine import Engine


@dataclass
class AppState:
    engine: Engine
    tenants: Tenants | None                 # None: --insecure-no-auth
    admin_key: str | None = None
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    limiter: Limiter = field(default_factory=Limiter)
    # With a registry: registers "name@V" in the engine on first use (server.RegistryWatcher.pin);
    # False if the registry has no such version. Blocking: call it off the event loop.
    pin_version: Callable[[str], bool] | None = None
    metrics_key: str | None = None          # /metrics and /ready's details: this key or the admin key
    limits: HttpLimits = field(default_factory=HttpLimits)
    grammars: GrammarCache | None = None
    # With a registry: the fine-tuning service (finetune.service.FineTuning) behind /v1/files and
    # /v1/fine_tuning, which also resolves "ft:..." model ids. None: those routes answer 404.
    finetune: object | None = None

    def __post_init__(self) -> None:
        if self.grammars is None:
            self.grammars = GrammarCache(self.limits.grammar_cache)


def error_body(e: ServeError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "code": e.code, "param": e.param}}


def error_response(e: ServeError) -> JSONResponse:
    headers = {}
    if getattr(e, "retry_after", None) is not None:
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(e), status_code=e.status, headers=headers)


def app_state(request: Request) -> AppState:
    return request.app.state.serve


def bearer(request: Request) -> str | None:
    h = request.headers.get("authorization", "")
    return h[7:].strip() if h[:7].lower() == "bearer " else None


def tenant(request: Request) -> Tenant:
    """The tenant owning the request's key (401 without a valid one); everyone under --insecure-no-auth."""
    state = app_state(request)
    if state.tenants is None:
        return ANONYMOUS
    return state.tenants.authenticate(bearer(request))


def _matches(key: str | None, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(digest(key or ""), digest(expected))


def require_admin(request: Request) -> None:
    state = app_state(request)
    if state.admin_key is None:
        raise AuthError("admin routes are disabled: start the server with --admin-key or LORAOPS_ADMIN_KEY")
    if not _matches(bearer(request), state.admin_key):
        raise AuthError("invalid admin key")


def is_operator(request: Request) -> bool:
    """The caller holds the metrics key or the admin key; with --insecure-no-auth (no tenants to keep
    apart) and neither key set, everyone is."""
    state = app_state(request)
    if state.tenants is None and state.admin_key is None and state.metrics_key is None:
        return True
    key = bearer(request)
    return _matches(key, state.metrics_key) | _matches(key, state.admin_key)   # both compared, always


def require_operator(request: Request) -> None:
    if is_operator(request):
        return
    state = app_state(request)
    if state.metrics_key is None and state.admin_key is None:
        raise AuthError("metrics are disabled: start the server with --metrics-key (or --admin-key)")
    raise AuthError("invalid metrics key: send 'Authorization: Bearer <metrics or admin key>'")


async def json_body(request: Request) -> dict:
    """The request's JSON object: at most limits.max_body_bytes (413 past it, without reading the
    rest), parsed and checked (protocol.parse_json) in a worker thread so that a large body never
    stalls the event loop."""
    limit = app_state(request).limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body is {int(declared)} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the request body is over this server's limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosedError("the client closed the connection while sending the body") from None
    raw = b"".join(chunks)
    return parse_json(raw) if size < 4096 else await run_in_threadpool(parse_json, raw)
