"""One admitted request: engine events -> an OpenAI response, whole or streamed (SSE).

A request is one engine sequence per generated choice (`n`, or `best_of` of which the n with the
best mean log-prob per token are returned); their events arrive tagged with the choice's index.
Per choice the text accumulates, with its log-probs (logprobs.py renders OpenAI's shapes) and, for
a chat request with tools, its tool calls (tools.ToolCallParser, incrementally when streaming).

The tenant lease and the metrics are settled exactly once, however the request ends: done, failed,
or the client gone. A streaming client that goes away closes the generator; a non-streaming one is
noticed by polling `request.is_disconnected()` while the answer is generated. Either way every
sequence of the request is cancelled in the engine, so nobody's tokens are computed for a closed
connection; one choice failing fails the request, and cancels the others.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse

from loraops.serve.deps import AppState, error_body, error_response
from loraops.serve.engine import DoneEvent, ErrorEvent, PromptLogprobsEvent, TokenEvent
from loraops.serve.errors import ClientClosedError
from loraops.serve.logprobs import TextOffsets, TokenTable, chat_logprobs, completion_logprobs
from loraops.serve.protocol import GenerationRequest
from loraops.serve.tenancy import Tenant
from loraops.serve.tools import ToolCallParser

DISCONNECT_POLL_S = 0.25


@dataclass
class Choice:
    """One generated choice while its sequence runs."""

    index: int
    text: list[str] = field(default_factory=list)
    tokens: list[TokenEvent] = field(default_factory=list)
    done: DoneEvent | None = None
    parser: ToolCallParser | None = None
    offsets: TextOffsets | None = None       # completions' text_offset, running
    call_ids: list[str] = field(default_factory=list)

    def mean_logprob(self) -> float:
        lps = [t.logprob.logprob for t in self.tokens if t.logprob is not None]
        return sum(lps) / len(lps) if lps else 0.0


@dataclass
class Answer:
    """What the route knows of the request besides its events."""

    prompt: list[int]                        # its token ids
    echo_text: str = ""                      # completions with echo: the prompt as text
    table: TokenTable | None = None          # when it asked for logprobs


class Job:
    def __init__(self, state: AppState, tenant: Tenant, req: GenerationRequest, seqs: list, events: asyncio.Queue,
                 lease, rid: str, chat: bool, answer: Answer):
        self.state, self.tenant, self.req, self.seqs, self.events = state, tenant, req, seqs, events
        self.lease, self.rid, self.chat, self.created, self.answer = lease, rid, chat, int(time.time()), answer
        self.completion_tokens = 0
        self.prompt_entries: tuple | None = None
        names = [f.name for f in req.tools.functions] if req.tools is not None and req.tools.parses else None
        self.choices = [Choice(i, parser=ToolCallParser(names) if names else None) for i in range(len(seqs))]

    # ---- bookkeeping -------------------------------------------------------------------------

    def _settle(self, status: int, code: str | None = None, prompt_tokens: int = 0) -> None:
        m, labels = self.state.metrics, (self.seqs[0].model.label, self.tenant.name)
        m.requests.labels(*labels, str(status)).inc()
        if code is not None:
            m.errors.labels(*labels, code).inc()
        m.prompt_tokens.labels(*labels).inc(prompt_tokens)
        m.completion_tokens.labels(*labels).inc(self.completion_tokens)
        self.lease.release(len(self.seqs) * len(self.answer.prompt) + self.completion_tokens)

    def _cancel(self) -> None:
        for seq in self.seqs:
            self.state.engine.cancel(seq)

    async def _events(self):
        """(choice, event) until every choice is done or one fails; cancels the sequences if the
        consumer stops early or one fails."""
        finished, running = False, len(self.seqs)
        try:
            while running:
                i, ev = await self.events.get()
                if isinstance(ev, TokenEvent):
                    self.completion_tokens += 1
                elif isinstance(ev, PromptLogprobsEvent):
                    self.prompt_entries = ev.entries
                elif isinstance(ev, ErrorEvent):
                    finished = True
                    self._cancel()
                    yield self.choices[i], ev
                    return
                else:
                    running -= 1
                    self.choices[i].done = ev
                yield self.choices[i], ev
            finished = True
        finally:
            if not finished:
                self._cancel()
                self._settle(499, "client_closed_request", len(self.answer.prompt))

    def _usage(self) -> dict:
        prompt = len(self.answer.prompt)
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}

    # ---- whole answers -----------------------------------------------------------------------

    async def whole(self, request: Request | None = None) -> JSONResponse:
        """The whole answer; if the client goes away first, the sequences are cancelled (and the 499
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
        async for choice, ev in self._events():
            if isinstance(ev, TokenEvent):
                choice.text.append(ev.text)
                choice.tokens.append(ev)
            elif isinstance(ev, ErrorEvent):
                self._settle(ev.error.status, ev.error.code)
                return error_response(ev.error)
        self._settle(200, prompt_tokens=len(self.answer.prompt))
        best = sorted(self.choices, key=lambda c: -c.mean_logprob())[:self.req.n] \
            if self.req.best_of > self.req.n else self.choices
        choices = [self._chat_choice(c, i) if self.chat else self._completion_choice(c, i) for i, c in enumerate(best)]
        return JSONResponse({"id": self.rid, "object": "chat.completion" if self.chat else "text_completion",
                             "created": self.created, "model": self.req.model, "choices": choices,
                             "usage": self._usage()})

    def _completion_choice(self, c: Choice, index: int) -> dict:
        echo = self.answer.echo_text if self.req.echo else ""
        logprobs = None
        if self.req.logprobs is not None:
            entries = [(t.token_id, t.logprob) for t in c.tokens]
            offsets = TextOffsets(self.answer.table, len(echo))
            if self.req.echo:
                entries = list(zip(self.answer.prompt, self.prompt_entries)) + entries
                offsets = TextOffsets(self.answer.table)
            logprobs = completion_logprobs(entries, self.answer.table, offsets)
        return {"index": index, "text": echo + "".join(c.text), "finish_reason": c.done.finish_reason,
                "logprobs": logprobs}

    def _chat_choice(self, c: Choice, index: int) -> dict:
        text, calls = "".join(c.text), []
        message = {"role": "assistant", "content": text, "refusal": None}
        if c.parser is not None:
            c.parser.feed(text)
            c.parser.finish()
            calls = [{"id": _call_id(), "type": "function", "function": {"name": k.name, "arguments": k.arguments}}
                     for k in c.parser.calls]
            if calls:
                message.update(content=c.parser.content if c.parser.content.strip() else None, tool_calls=calls)
        logprobs = None
        if self.req.logprobs is not None:
            logprobs = {"content": chat_logprobs([t.logprob for t in c.tokens], self.answer.table), "refusal": None}
        return {"index": index, "message": message, "finish_reason": _finish(c, calls), "logprobs": logprobs}

    # ---- streams -----------------------------------------------------------------------------

    def _chunk(self, index: int, delta: dict | str | None, finish: str | None = None,
               logprobs: dict | None = None) -> str:
        if self.chat:
            choice = {"index": index, "delta": delta or {}, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": delta or "", "finish_reason": finish, "logprobs": logprobs}
        return self._send([choice])

    def _send(self, choices: list, usage: dict | None = None) -> str:
        body = {"id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.req.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def sse(self):
        wants = self.req.logprobs is not None
        if self.chat:
            for c in self.choices:
                yield self._chunk(c.index, {"role": "assistant", "content": ""})
        elif self.req.echo and not wants:
            for c in self.choices:
                yield self._chunk(c.index, self.answer.echo_text)
        async for c, ev in self._events():
            if isinstance(ev, PromptLogprobsEvent):
                # Choice 0's prompt log-probs come at its prefill, before any choice's first token
                # (choices are admitted in order): every choice echoes them.
                if self.req.echo and wants:
                    for other in self.choices:
                        other.offsets = TextOffsets(self.answer.table)
                        logprobs = completion_logprobs(list(zip(self.answer.prompt, ev.entries)), self.answer.table,
                                                       other.offsets)
                        yield self._chunk(other.index, self.answer.echo_text, logprobs=logprobs)
            elif isinstance(ev, TokenEvent):
                for chunk in (self._chat_deltas(c, ev) if self.chat else self._completion_delta(c, ev)):
                    yield chunk
            elif isinstance(ev, ErrorEvent):
                self._settle(ev.error.status, ev.error.code)
                yield f"data: {json.dumps(error_body(ev.error))}\n\n"
                break
            else:
                if c.parser is not None:
                    for chunk in self._tool_deltas(c, c.parser.finish(), None):
                        yield chunk
                yield self._chunk(c.index, None, _finish(c, c.parser.calls if c.parser else []))
                if all(o.done is not None for o in self.choices):
                    self._settle(200, prompt_tokens=len(self.answer.prompt))
                    if self.req.include_usage:
                        yield self._send([], self._usage())
        yield "data: [DONE]\n\n"

    def _completion_delta(self, c: Choice, ev: TokenEvent) -> list[str]:
        logprobs = None
        if self.req.logprobs is not None:
            if c.offsets is None:
                c.offsets = TextOffsets(self.answer.table, len(self.answer.echo_text) if self.req.echo else 0)
            logprobs = completion_logprobs([(ev.token_id, ev.logprob)], self.answer.table, c.offsets)
        return [self._chunk(c.index, ev.text, logprobs=logprobs)] if ev.text or logprobs else []

    def _chat_deltas(self, c: Choice, ev: TokenEvent) -> list[str]:
        logprobs = None
        if self.req.logprobs is not None:
            logprobs = {"content": chat_logprobs([ev.logprob], self.answer.table), "refusal": None}
        if c.parser is None:
            return [self._chunk(c.index, {"content": ev.text}, logprobs=logprobs)] if ev.text or logprobs else []
        chunks = self._tool_deltas(c, c.parser.feed(ev.text), logprobs)
        return chunks or ([self._chunk(c.index, {"content": ""}, logprobs=logprobs)] if logprobs else [])

    def _tool_deltas(self, c: Choice, deltas: list[tuple], logprobs: dict | None) -> list[str]:
        """Parser deltas -> chunks as OpenAI streams tool calls: the call's index, id, type and name
        (arguments "") first, then its arguments in pieces. The token's logprobs ride on the first."""
        chunks = []
        for d in deltas:
            if d[0] == "content":
                delta = {"content": d[1]}
            elif d[0] == "call":
                c.call_ids.append(_call_id())
                delta = {"tool_calls": [{"index": d[1], "id": c.call_ids[d[1]], "type": "function",
                                         "function": {"name": d[2], "arguments": ""}}]}
            elif d[2]:
                delta = {"tool_calls": [{"index": d[1], "function": {"arguments": d[2]}}]}
            else:
                continue
            chunks.append(self._chunk(c.index, delta, logprobs=logprobs))
            logprobs = None
        return chunks


def _finish(c: Choice, calls: list) -> str:
    """OpenAI's finish_reason: "tool_calls" when the reply called a tool and was not cut off."""
    return "tool_calls" if calls and c.done.finish_reason == "stop" else c.done.finish_reason


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
