"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions.

Order of checks per generation request, cheapest first, so that a refused request costs little:
key (401) -> body size (413) -> JSON, fields and prompt characters (400; parsed off the event loop)
-> model visible to this tenant (404, identical for "exists but not yours"; for a composition,
every part) -> the tenant's concurrency and request-rate limits (429) -> tokenizing (in a worker
thread) -> lengths (400) -> the tenant's token budget (429: every choice's prompt and max_tokens)
-> response_format or tool grammar compiled (cached) -> engine queue (503) -> generation.

A request for n choices (or best_of) is that many engine sequences, each prefilled on its own (no
prefix sharing yet: correctness first), submitted together; if the queue refuses one, the others
are cancelled.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from loraops.finetune.ids import is_fine_tuned
from loraops.serve import schemas
from loraops.serve.deps import AppState, app_state, json_body, require_task, tenant
from loraops.serve.errors import BadRequestError, ModelNotFoundError, ServeError
from loraops.serve.grammar import InvalidResponseFormatError, RowConstraint
from loraops.serve.job import Answer, Job
from loraops.serve.logprobs import token_table
from loraops.serve.model_ref import ModelRef, Part
from loraops.serve.protocol import GenerationRequest, parse_chat, parse_completion
from loraops.serve.sampling import choice_params
from loraops.serve.tenancy import Tenant
from loraops.serve.tools import render_messages, tool_grammar

router = APIRouter(prefix="/v1", tags=["openai"])


def _served(state: AppState, part: Part) -> bool:
    if part.version is not None and state.pin_version is not None:
        return state.pin_version(part.id)              # also marks it recently used
    return state.engine.has_model(part.id)


def visible_model(state: AppState, tenant: Tenant, model: ModelRef) -> None:
    """Raise unless `model` (an id or a composition) is one this tenant may use: 404 for every part
    that is unknown or not this tenant's. May fetch "name@V" from the registry, which blocks: call
    it through check_visible."""
    engine = state.engine
    for part in model.parts:
        # The tenant check comes first: another tenant's versions are never looked up or loaded.
        if not (tenant.can_use(part.id, engine.base_name) and _served(state, part)):
            raise ModelNotFoundError(f"the model {part.id!r} does not exist", param="model")
        if model.is_composition and part.id == engine.base_name:
            raise BadRequestError("the base model cannot be part of a composition", param="model")


async def check_visible(state: AppState, tenant: Tenant, model: ModelRef) -> None:
    """visible_model, in a worker thread only when it may block (a registry fetch of "name@V")."""
    if state.pin_version is not None and any(p.version is not None for p in model.parts):
        await run_in_threadpool(visible_model, state, tenant, model)
    else:
        visible_model(state, tenant, model)


async def resolve_model(state: AppState, tenant: Tenant, model: str, single: bool = False) -> ModelRef:
    """The model a request names, parsed once and checked visible to `tenant`: an id or (unless
    `single`) a composition, or one of the tenant's fine-tuned "ft:..." ids, which name registry
    versions (finetune/ids.py) that the fine-tuning service resolves per tenant — another tenant's
    resolves exactly like an unknown id."""
    if not is_fine_tuned(model):
        ref = ModelRef.parse(model, single=single)
        await check_visible(state, tenant, ref)
        return ref
    if state.finetune is None:
        raise ModelNotFoundError(f"the model {model[:80]!r} does not exist", param="model")
    return ModelRef.parse(await run_in_threadpool(state.finetune.engine_model, tenant, model))


@router.get("/models", response_model=schemas.ModelList, responses=schemas.errors(401))
async def list_models(state: AppState = Depends(app_state), who: Tenant = Depends(tenant)):
    """The models this key may use: its adapters, and the base if the tenant may use it."""
    engine, now = state.engine, int(time.time())
    ids = ([engine.base_name] if who.allow_base else []) + sorted(
        e.model_id for e in engine.models() if who.can_use(e.model_id, engine.base_name))
    if state.finetune is not None:
        ids += await run_in_threadpool(state.finetune.models, who)
    return {"object": "list", "data": [
        {"id": i, "object": "model", "created": now, "owned_by": "loraops" if i == engine.base_name
         else who.name, "root": engine.base_name} for i in ids]}


@router.get("/models/{model_id}", response_model=schemas.Model, responses=schemas.errors(400, 401, 404))
async def get_model(model_id: str, state: AppState = Depends(app_state), who: Tenant = Depends(tenant)):
    """One model this key may use (a composition is not a model: 400)."""
    await resolve_model(state, who, model_id, single=True)
    return {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": who.name,
            "root": state.engine.base_name}


_GENERATION_ERRORS = schemas.errors(400, 401, 404, 413, 429, 503)


@router.post("/completions", response_model=schemas.Completion, openapi_extra=schemas.request_body(
    schemas.CompletionRequest), responses={200: schemas.sse(schemas.Completion, "The completion"),
                                           **_GENERATION_ERRORS})
async def completions(request: Request, state: AppState = Depends(app_state), who: Tenant = Depends(tenant),
                      body: dict = Depends(json_body)):
    """Complete a prompt; with "stream": true, as server-sent events ending in `data: [DONE]`."""
    return await _generate(request, state, who, body, chat=False)


@router.post("/chat/completions", response_model=schemas.ChatCompletion, openapi_extra=schemas.request_body(
    schemas.ChatCompletionRequest), responses={200: schemas.sse(schemas.ChatCompletion, "The reply"),
                                               **_GENERATION_ERRORS})
async def chat_completions(request: Request, state: AppState = Depends(app_state),
                           who: Tenant = Depends(tenant), body: dict = Depends(json_body)):
    """Answer a conversation (formatted with the tokenizer's chat template); "stream": true as SSE."""
    return await _generate(request, state, who, body, chat=True)


def _encode(state: AppState, req: GenerationRequest) -> list[int]:
    tok = state.engine.tokenizer
    if req.messages is not None:
        try:
            text = tok.apply_chat_template(render_messages(req.messages, req.tools), tokenize=False,
                                           add_generation_prompt=True)
        except Exception as e:                            # a template may reject role orders
            raise BadRequestError(f"the messages do not fit the model's chat template: {e}",
                                  param="messages") from e
        return tok(text, add_special_tokens=False)["input_ids"]
    if isinstance(req.prompt, list):
        if any(t < 0 or t >= len(tok) for t in req.prompt):
            raise BadRequestError("prompt token ids must be in the vocabulary", param="prompt")
        return list(req.prompt)
    return tok(req.prompt)["input_ids"]


def _constraints(state: AppState, req: GenerationRequest) -> list[RowConstraint | None]:
    """Per choice, its own matcher of the grammar the request decodes under (response_format or
    the tool calls; compiled once, cached), or None each."""
    try:
        if req.schema is not None:
            grammar = state.grammars.compile(req.schema)
        else:
            lark = tool_grammar(req.tools) if req.tools is not None else None
            grammar = state.grammars.compile_lark(lark) if lark is not None else None
    except InvalidResponseFormatError as e:
        raise BadRequestError(str(e), param="response_format" if req.schema is not None else "tools") from e
    engine = state.engine
    return [None if grammar is None else RowConstraint(grammar, engine.tokenizer, engine.vocab_size)
            for _ in range(req.best_of)]


def _answer(state: AppState, req: GenerationRequest, prompt: list[int]) -> Answer:
    """What the response needs besides the events (the token table takes seconds once: a worker thread)."""
    engine = state.engine
    echo = ""
    if req.echo:
        echo = req.prompt if isinstance(req.prompt, str) else engine.tokenizer.decode(prompt, skip_special_tokens=True)
    table = token_table(engine.tokenizer, engine.vocab_size) if req.logprobs is not None else None
    return Answer(prompt, echo, table)


def _count(state: AppState, model: str, tenant_name: str, e: ServeError) -> None:
    state.metrics.requests.labels(model, tenant_name, str(e.status)).inc()
    state.metrics.errors.labels(model, tenant_name, e.code).inc()


async def _generate(request: Request, state: AppState, who: Tenant, body: dict, chat: bool):
    engine, label_model, lease, seqs = state.engine, "-", None, []
    try:
        require_task(state, "generation")
        parse = parse_chat if chat else parse_completion
        req = parse(body, state.limits.max_prompt_chars, state.limits.max_choices)
        model = await resolve_model(state, who, req.model)   # parsed once: the engine gets this value
        label_model = model.label
        await state.limiter.check_async(who)              # over its limits: refused before any tokenizing
        prompt = await run_in_threadpool(_encode, state, req)
        engine.check_lengths(len(prompt), req.params.max_tokens)
        lease = await state.limiter.acquire_async(who, req.best_of * (len(prompt) + req.params.max_tokens))
        constraints = await run_in_threadpool(_constraints, state, req) if req.schema or req.tools \
            else [None] * req.best_of
        answer = await run_in_threadpool(_answer, state, req, prompt)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink_for(i: int):
            def sink(ev):
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (i, ev))
                except RuntimeError:                      # the event loop is gone (shutdown)
                    pass
            return sink
        for i, constraint in enumerate(constraints):
            seqs.append(engine.submit(who.name, model, prompt, choice_params(req.params, i), sink_for(i), constraint))
    except ServeError as e:
        for seq in seqs:
            engine.cancel(seq)
        if lease is not None:
            lease.release(0)
        _count(state, label_model, who.name, e)
        raise
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    job = Job(state, who, req, seqs, events, lease, rid, chat, answer)
    if req.stream:
        return StreamingResponse(job.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await job.whole(request)
