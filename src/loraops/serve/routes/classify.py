"""POST /v1/classifications: sequence classification on an encoder server (serve/encoder.py).

    {"model": "acme-sentiment", "input": "great product" | ["great product", "never again"]}
 -> {"object": "list", "data": [{"object": "classification", "index": 0, "label": "pos",
                                 "scores": {"neg": 0.02, "neutral": 0.05, "pos": 0.93}}, ...],
     "id", "created", "model", "usage": {"prompt_tokens", "total_tokens"}}

Order of checks, cheapest first (as routes/openai.py): key (401) -> body size (413) -> this server
classifies (400 unsupported_task) -> fields (400) -> model visible to this tenant (404, the same for
another tenant's) -> concurrency and request rate (429) -> tokenizing (worker thread) -> lengths
(400) -> token budget (429) -> engine queue (503) -> the forward (500 for this request alone if its
adapter produces NaN/inf).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from loraops.serve import schemas
from loraops.serve.deps import AppState, app_state, json_body, require_task, tenant
from loraops.serve.errors import ServeError
from loraops.serve.events import ErrorEvent
from loraops.serve.protocol import parse_classification
from loraops.serve.routes.openai import resolve_model
from loraops.serve.tenancy import Tenant

router = APIRouter(prefix="/v1", tags=["classification"])


@router.post("/classifications", response_model=schemas.ClassificationList,
             openapi_extra=schemas.request_body(schemas.ClassificationRequest),
             responses=schemas.errors(400, 401, 404, 413, 429, 500, 503))
async def classifications(state: AppState = Depends(app_state), who: Tenant = Depends(tenant),
                          body: dict = Depends(json_body)):
    """Classify a text or a batch of texts with an adapter's head (each tenant's adapters share
    the server's batches); `scores` holds every label's probability."""
    label, lease, tokens, used = "-", None, 0, 0
    try:
        require_task(state, "classification")
        req = parse_classification(body, state.limits.max_prompt_chars)
        model = await resolve_model(state, who, req.model, single=True)
        label = model.label
        await state.limiter.check_async(who)
        engine = state.engine
        ids = await run_in_threadpool(lambda: [engine.tokenizer(t)["input_ids"] for t in req.inputs])
        engine.check_inputs(ids)
        tokens = sum(map(len, ids))
        lease = await state.limiter.acquire_async(who, tokens)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def sink(out) -> None:
            try:
                loop.call_soon_threadsafe(_answer, answer, out)
            except RuntimeError:                          # the event loop is gone (shutdown)
                pass
        job = engine.submit(who.name, model, ids, sink)
        try:
            out = await answer
        except asyncio.CancelledError:                    # the handler was cancelled: drop it if it still waits
            engine.cancel(job)
            raise
        used = tokens
        if isinstance(out, ErrorEvent):
            raise out.error
    except ServeError as e:
        _count(state, label, who.name, e.status, e.code, tokens)
        raise
    finally:
        if lease is not None:
            lease.release(used)                           # refused before the forward: nothing used
    _count(state, label, who.name, 200, None, tokens)
    return {"id": "clsf-" + uuid.uuid4().hex[:24], "object": "list", "created": int(time.time()), "model": req.model,
            "data": [{"object": "classification", "index": i, "label": out.labels[int(p.argmax())],
                      "scores": dict(zip(out.labels, p.tolist()))} for i, p in enumerate(out.probs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _answer(future: asyncio.Future, out) -> None:
    if not future.done():                               # not cancelled meanwhile
        future.set_result(out)


def _count(state: AppState, model: str, tenant_name: str, status: int, code: str | None, tokens: int) -> None:
    m = state.metrics
    m.requests.labels(model, tenant_name, str(status)).inc()
    if code is not None:
        m.errors.labels(model, tenant_name, code).inc()
    m.prompt_tokens.labels(model, tenant_name).inc(tokens if status == 200 else 0)
