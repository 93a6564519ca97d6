"""OpenAI request bodies -> validated, typed requests. Everything wrong is a BadRequestError (400)
naming the field, never an exception that would become a 500."""

from __future__ import annotations

import json
from dataclasses import dataclass

from loraops.serve.errors import BadRequestError
from loraops.serve.grammar import InvalidResponseFormatError, parse_response_format
from loraops.serve.sampling import SamplingParams

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    params: SamplingParams
    stream: bool
    include_usage: bool
    prompt: str | list[int] | None = None            # /v1/completions
    messages: tuple[dict, ...] | None = None         # /v1/chat/completions
    schema: dict | None = None                       # response_format json_object / json_schema


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequestError(f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    return body


def _num(body: dict, name: str, default, lo: float, hi: float, integer: bool = False, lo_open: bool = False):
    v = body.get(name, default)
    if v is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise BadRequestError(f"{name} must be {kind}, got {json.dumps(v)[:40]}", param=name)
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise BadRequestError(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v}", param=name)
    return v


def _sampling(body: dict, max_tokens_field: str) -> SamplingParams:
    if body.get("n", 1) != 1:
        raise BadRequestError("only n=1 is supported", param="n")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP:
        stop = tuple(stop)
    else:
        raise BadRequestError(f"stop must be a string or a list of at most {MAX_STOP} strings", param="stop")
    max_tokens = body.get(max_tokens_field)
    if max_tokens is None and max_tokens_field == "max_completion_tokens":
        max_tokens_field = "max_tokens"
    return SamplingParams(
        max_tokens=_num(body, max_tokens_field, 16, 1, 2**31, integer=True),
        temperature=float(_num(body, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)),
        top_k=_num(body, "top_k", 0, 0, 2**31, integer=True),
        seed=_num(body, "seed", None, -(2**63), 2**63 - 1, integer=True),
        stop=stop)


def _common(body: dict, max_tokens_field: str) -> tuple[str, SamplingParams, bool, bool]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model must be a non-empty string", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequestError("stream must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequestError("stream_options must be an object", param="stream_options")
    if body.get("logprobs") not in (None, False, 0) or body.get("echo") or body.get("tools"):
        raise BadRequestError("logprobs, echo and tools are not supported by this server")
    return model, _sampling(body, max_tokens_field), stream, bool(opts.get("include_usage", False))


def _schema(body: dict) -> dict | None:
    try:
        return parse_response_format(body.get("response_format"))
    except InvalidResponseFormatError as e:
        raise BadRequestError(str(e), param="response_format") from e


def parse_completion(body: dict) -> GenerationRequest:
    model, params, stream, usage = _common(body, "max_tokens")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        pass
    elif not isinstance(prompt, str) or not prompt:
        raise BadRequestError("prompt must be a non-empty string (or one string, or a list of token ids)",
                              param="prompt")
    return GenerationRequest(model, params, stream, usage, prompt=prompt, schema=_schema(body))


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    raise BadRequestError(f"messages[{i}].content must be a string or a list of text parts",
                          param=f"messages[{i}].content")


def parse_chat(body: dict) -> GenerationRequest:
    model, params, stream, usage = _common(body, "max_completion_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise BadRequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got "
                                  f"{json.dumps(m.get('role'))[:40]}", param=f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        clean.append({"role": role, "content": _content(m, i)})
    return GenerationRequest(model, params, stream, usage, messages=tuple(clean), schema=_schema(body))
