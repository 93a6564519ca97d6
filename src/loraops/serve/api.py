"""The HTTP API: OpenAI-compatible routes, health, metrics, and admin routes, over one Engine.

Every error is an OpenAI error body {"error": {"message", "type", "code", "param"}} with the
status of its ServeError class (errors.py). Order of checks per request: key (401) -> body (400)
-> model visible to this tenant (404, identical for "exists but not yours"; for a composition
"a:0.7+b:0.3", every part) -> lengths (400) -> tenant limits (429) -> engine queue (503) -> generation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraops.errors import LoraOpsError
from loraops.serve.engine import DoneEvent, Engine, ErrorEvent, TokenEvent
from loraops.serve.errors import AuthError, BadRequestError, ModelNotFoundError, ServeError
from loraops.serve.grammar import InvalidResponseFormatError, RowConstraint, compile_grammar
from loraops.serve.limits import Limiter
from loraops.serve.metrics import ServeMetrics
from loraops.serve.model_ref import ModelRef, Part
from loraops.serve.protocol import GenerationRequest, parse_chat, parse_completion, parse_json
from loraops.serve.tenancy import ANONYMOUS, Tenant, Tenants, digest

log = logging.getLogger("loraops.serve")


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


def error_body(e: ServeError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "code": e.code, "param": e.param}}


def error_response(e: ServeError) -> JSONResponse:
    headers = {}
    if getattr(e, "retry_after", None) is not None:
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(e), status_code=e.status, headers=headers)


def _bearer(request: Request) -> str | None:
    h = request.headers.get("authorization", "")
    return h[7:].strip() if h[:7].lower() == "bearer " else None


def create_app(state: AppState, routers=()) -> FastAPI:
    app = FastAPI(title="loraops", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    engine, metrics = state.engine, state.metrics
    for router in routers:
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

    def tenant_of(request: Request) -> Tenant:
        if state.tenants is None:
            return ANONYMOUS
        return state.tenants.authenticate(_bearer(request))

    def require_admin(request: Request) -> None:
        if state.admin_key is None:
            raise AuthError("admin routes are disabled: start the server with --admin-key "
                            "or LORAOPS_ADMIN_KEY")
        key = _bearer(request) or ""
        if not hmac.compare_digest(digest(key), digest(state.admin_key)):
            raise AuthError("invalid admin key")

    def served(part: Part) -> bool:
        if part.version is not None and state.pin_version is not None:
            return state.pin_version(part.id)              # also marks it recently used
        return engine.has_model(part.id)

    def visible_model(tenant: Tenant, model: ModelRef) -> None:
        """Raise unless `model` (an id or a composition) is one this tenant may use: 404 for every
        part that is unknown or not this tenant's. May fetch "name@V" from the registry, which
        blocks: call it through check_visible."""
        for part in model.parts:
            # The tenant check comes first: another tenant's versions are never looked up or loaded.
            if not (tenant.can_use(part.id, engine.base_name) and served(part)):
                raise ModelNotFoundError(f"the model {part.id!r} does not exist", param="model")
            if model.is_composition and part.id == engine.base_name:
                raise BadRequestError("the base model cannot be part of a composition", param="model")

    async def check_visible(tenant: Tenant, model: ModelRef) -> None:
        """visible_model, in a worker thread only when it may block (a registry fetch of "name@V")."""
        if state.pin_version is not None and any(p.version is not None for p in model.parts):
            await run_in_threadpool(visible_model, tenant, model)
        else:
            visible_model(tenant, model)

    # ---- health, metrics --------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not engine.alive():
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready", "base": engine.base_name, "adapters": len(engine.models())}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- OpenAI routes ----------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models(request: Request):
        tenant = tenant_of(request)
        now = int(time.time())
        ids = ([engine.base_name] if tenant.allow_base else []) + sorted(
            e.model_id for e in engine.models() if tenant.can_use(e.model_id, engine.base_name))
        return {"object": "list", "data": [
            {"id": i, "object": "model", "created": now, "owned_by": "loraops" if i == engine.base_name
             else tenant.name, "root": engine.base_name} for i in ids]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request):
        tenant = tenant_of(request)
        await check_visible(tenant, ModelRef.parse(model_id, single=True))   # a composition is not a model
        return {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": tenant.name,
                "root": engine.base_name}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, parse_completion, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, parse_chat, chat=True)

    def encode(req: GenerationRequest) -> list[int]:
        tok = engine.tokenizer
        if req.messages is not None:
            try:
                text = tok.apply_chat_template(list(req.messages), tokenize=False, add_generation_prompt=True)
            except Exception as e:                            # a template may reject role orders
                raise BadRequestError(f"the messages do not fit the model's chat template: {e}",
                                      param="messages") from e
            return tok(text, add_special_tokens=False)["input_ids"]
        if isinstance(req.prompt, list):
            if any(t < 0 or t >= len(tok) for t in req.prompt):
                raise BadRequestError("prompt token ids must be in the vocabulary", param="prompt")
            return list(req.prompt)
        return tok(req.prompt)["input_ids"]

    def make_constraint(req: GenerationRequest):
        try:
            grammar = compile_grammar(req.schema)
        except InvalidResponseFormatError as e:
            raise BadRequestError(str(e), param="response_format") from e
        return RowConstraint(grammar, engine.tokenizer, engine.vocab_size)

    async def generate(request: Request, parse, chat: bool):
        tenant = tenant_of(request)
        label_model = "-"
        try:
            req = parse(parse_json(await request.body()))
            model = ModelRef.parse(req.model)             # parsed once: the engine gets this value
            await check_visible(tenant, model)
            label_model = model.label
            prompt = await run_in_threadpool(encode, req)
            engine.check_lengths(len(prompt), req.params.max_tokens)
            constraint = await run_in_threadpool(make_constraint, req) if req.schema is not None else None
            lease = await state.limiter.acquire_async(tenant, len(prompt) + req.params.max_tokens)
        except ServeError as e:
            count(label_model, tenant.name, e)
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(ev):
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:                              # the event loop is gone (shutdown)
                pass
        try:
            seq = engine.submit(tenant.name, model, prompt, req.params, sink, constraint)
        except ServeError as e:
            lease.release(0)
            count(label_model, tenant.name, e)
            raise
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        job = Job(state, tenant, req, seq, events, lease, rid, chat)
        if req.stream:
            return StreamingResponse(job.sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await job.whole()

    def count(model: str, tenant: str, e: ServeError) -> None:
        metrics.requests.labels(model, tenant, str(e.status)).inc()
        metrics.errors.labels(model, tenant, e.code).inc()

    # ---- admin ------------------------------------------------------------------------------

    @app.get("/admin/adapters")
    async def admin_list(request: Request):
        require_admin(request)
        resident = engine.resident()
        return {"base": engine.base_name, "adapters": [
            {"name": e.model_id, "path": e.path, "rank": e.rank, "resident": e.model_id in resident,
             "slot": resident.get(e.model_id)} for e in engine.models()]}

    @app.post("/admin/adapters", status_code=201)
    async def admin_load(request: Request):
        require_admin(request)
        body = parse_json(await request.body())
        name, path, force = body.get("name"), body.get("path"), body.get("force", False)
        if not isinstance(path, str) or not path:
            raise BadRequestError("path must be a non-empty string", param="path")
        if not isinstance(force, bool):
            raise BadRequestError("force must be true or false", param="force")
        ref = ModelRef.parse(name, single=True)
        try:
            entry = await run_in_threadpool(engine.add_adapter, ref, path, force)
        except ServeError:
            raise
        except LoraOpsError as e:
            err = BadRequestError(f"adapter {name!r} cannot be loaded: {e}", param="path")
            err.code = "adapter_load_failed"
            raise err from e
        return {"name": entry.model_id, "path": entry.path, "rank": entry.rank}

    @app.delete("/admin/adapters/{name}")
    async def admin_unload(name: str, request: Request):
        require_admin(request)
        name = ModelRef.parse(name, single=True).id
        if not engine.remove_adapter(name):
            raise ModelNotFoundError(f"the model {name!r} does not exist", param="name")
        return {"name": name, "deleted": True}

    return app


class Job:
    """One admitted request: turns engine events into an OpenAI response (whole or streamed) and
    settles the tenant lease and the metrics exactly once, even if the client goes away."""

    def __init__(self, state: AppState, tenant: Tenant, req: GenerationRequest, seq, events: asyncio.Queue,
                 lease, rid: str, chat: bool):
        self.state, self.tenant, self.req, self.seq, self.events = state, tenant, req, seq, events
        self.lease, self.rid, self.chat, self.created = lease, rid, chat, int(time.time())
        self.completion_tokens = 0

    def _settle(self, status: int, code: str | None = None, prompt_tokens: int = 0) -> None:
        m, labels = self.state.metrics, (self.seq.model.label, self.tenant.name)
        m.requests.labels(*labels, str(status)).inc()
        if code is not None:
            m.errors.labels(*labels, code).inc()
        m.prompt_tokens.labels(*labels).inc(prompt_tokens)
        m.completion_tokens.labels(*labels).inc(self.completion_tokens)
        self.lease.release(len(self.seq.prompt) + self.completion_tokens)

    async def _events(self):
        """Engine events until Done or Error; cancels the sequence if the consumer stops early."""
        finished = False
        try:
            while True:
                ev = await self.events.get()
                if isinstance(ev, TokenEvent):
                    self.completion_tokens += 1
                finished = not isinstance(ev, TokenEvent)
                yield ev
                if finished:
                    return
        finally:
            if not finished:
                self.state.engine.cancel(self.seq)
                self._settle(499, "client_closed_request", len(self.seq.prompt))

    def _usage(self, done: DoneEvent) -> dict:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens}

    async def whole(self) -> JSONResponse:
        text = []
        async for ev in self._events():
            if isinstance(ev, TokenEvent):
                text.append(ev.text)
            elif isinstance(ev, ErrorEvent):
                self._settle(ev.error.status, ev.error.code)
                return error_response(ev.error)
            else:
                self._settle(200, prompt_tokens=ev.prompt_tokens)
                out = "".join(text)
                choice = ({"index": 0, "message": {"role": "assistant", "content": out},
                           "finish_reason": ev.finish_reason, "logprobs": None} if self.chat else
                          {"index": 0, "text": out, "finish_reason": ev.finish_reason, "logprobs": None})
                kind = "chat.completion" if self.chat else "text_completion"
                return JSONResponse({"id": self.rid, "object": kind, "created": self.created,
                                     "model": self.req.model, "choices": [choice], "usage": self._usage(ev)})
        raise AssertionError("event stream ended without a final event")

    def _chunk(self, delta: dict | str | None, finish: str | None, usage: dict | None = None,
               no_choices: bool = False) -> str:
        if self.chat:
            choice = {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        body = {"id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.req.model, "choices": [] if no_choices else [choice]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def sse(self):
        if self.chat:
            yield self._chunk({"role": "assistant", "content": ""}, None)
        async for ev in self._events():
            if isinstance(ev, TokenEvent):
                if ev.text:
                    yield self._chunk({"content": ev.text} if self.chat else ev.text, None)
            elif isinstance(ev, ErrorEvent):
                self._settle(ev.error.status, ev.error.code)
                yield f"data: {json.dumps(error_body(ev.error))}\n\n"
            else:
                self._settle(200, prompt_tokens=ev.prompt_tokens)
                yield self._chunk(None, ev.finish_reason)
                if self.req.include_usage:
                    yield self._chunk(None, None, self._usage(ev), no_choices=True)
        yield "data: [DONE]\n\n"


def openapi_schema() -> dict:
    """The HTTP API's OpenAPI document (docs/openapi.json is this, kept current by a test). Request
    bodies are validated by hand to give OpenAI-style errors, so they are documented in
    docs/serving.md; this lists the routes, methods and summaries."""
    return create_app(AppState(engine=None, tenants=None)).openapi()

