"""One admitted request: engine events -> an OpenAI response, whole or streamed (SSE).

The tenant lease and the metrics are settled exactly once, however the request ends: done, failed,
or the client gone. A streaming client that goes away closes the generator; a non-streaming one is
noticed by polling `request.is_disconnected()` while the answer is generated. Either way the
sequence is cancelled in the engine, so nobody's tokens are computed for a closed connection.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import Request
from fastapi.responses import JSONResponse

from loraops.serve.deps import AppState, error_body, error_response
from loraops.serve.engine import DoneEvent, ErrorEvent, TokenEvent
from loraops.serve.errors import ClientClosedError
from loraops.serve.protocol import GenerationRequest
from loraops.serve.tenancy import Tenant

DISCONNECT_POLL_S = 0.25


class Job:
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

    async def whole(self, request: Request | None = None) -> JSONResponse:
        """The whole answer; if the client goes away first, the sequence is cancelled (and the 499
        returned goes nowhere)."""
        answer = asyncio.ensure_future(self._collect())
        if request is None:
            return await answer
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not answer.done():                       # the client left (or this handler was cancelled)
                answer.cancel()
                await asyncio.gather(answer, return_exceptions=True)
        if answer.cancelled():
            return error_response(ClientClosedError("the client closed the connection"))
        return answer.result()

    async def _collect(self) -> JSONResponse:
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


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
