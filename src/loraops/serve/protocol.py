"""OpenAI request bodies -> validated, typed requests. Everything wrong is a BadRequestError (400)
naming the field, never an exception that would become a 500: these functions take any JSON a
client can send (tests/hostile/test_hostile_fuzz.py runs hypothesis over them).

Bounds, so that no body costs more than its size: JSON nesting (MAX_DEPTH), prompt characters
(checked before tokenizing; `max_prompt_chars`), stop strings (MAX_STOP, MAX_STOP_CHARS). Strings
must be text: a JSON escape such as "\\ud800" decodes to a lone surrogate, which no tokenizer can
encode, and is refused here with the field's name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from loraops.serve.config import HttpLimits
from loraops.serve.errors import BadRequestError
from loraops.serve.grammar import InvalidResponseFormatError, parse_response_format
from loraops.serve.sampling import SamplingParams

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP, MAX_STOP_CHARS = 4, 256
MAX_DEPTH = 64                     # JSON nesting of a request body; OpenAI's bodies need < 20
MAX_PROMPT_CHARS = HttpLimits.max_prompt_chars
MIN_TEMPERATURE = 1e-5             # below this (and above 0), logits / temperature overflow fp32
MIN_TOP_P = 1e-6                   # below this, top_p rounds to 0 in fp32 and keeps no token

# Fields that would change the output if honoured, each with the values that change nothing (and are
# accepted, like null). Anything else is refused with a 400 naming the field: a request never gets an
# answer as if a parameter had been applied when it was not. Implementing one = deleting its row.
UNSUPPORTED: dict[str, tuple] = {
    "n": (1,),
    "best_of": (1,),
    "suffix": ("",),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False, 0),        # completions: an int, chat: a bool
    "top_logprobs": (0,),
    "echo": (False,),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
}


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    params: SamplingParams
    stream: bool
    include_usage: bool
    prompt: str | list[int] | None = None            # /v1/completions
    messages: tuple[dict, ...] | None = None         # /v1/chat/completions
    schema: dict | None = None                       # response_format json_object / json_schema


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes, max_depth: int = MAX_DEPTH) -> dict:
    """A request body -> its JSON object. Strict JSON (no NaN/Infinity), at most `max_depth` levels
    of nesting, every string (keys too) valid text."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadRequestError(f"the request body nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as e:     # JSONDecodeError, NaN, a >4300-digit integer
        raise BadRequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    check_tree(body, max_depth)
    return body


def check_tree(body: dict, max_depth: int = MAX_DEPTH) -> None:
    """Walk the parsed body without recursion: refuse nesting deeper than `max_depth` and strings
    (keys included) that hold lone surrogates, naming where."""
    stack: list[tuple[object, int, tuple]] = [(body, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        param = _where(path) if path else None
        if isinstance(value, str):
            if not _is_text(value):
                raise BadRequestError(f"{_where(path)} holds a lone surrogate (not text)", param=param)
            continue
        if depth > max_depth:
            raise BadRequestError(f"the request body nests deeper than {max_depth} levels", param=param)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and not _is_text(key):
                raise BadRequestError(f"a key in {_where(path)} holds a lone surrogate (not text)", param=param)
            if isinstance(item, (dict, list, str)):
                stack.append((item, depth + 1, (*path, key)))


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "the request body"


def _num(body: dict, name: str, default, lo: float, hi: float, integer: bool = False, lo_open: bool = False):
    v = body.get(name, default)
    if v is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise BadRequestError(f"{name} must be {kind}, got {_show(v)}", param=name)
    if isinstance(v, float) and not math.isfinite(v):
        raise BadRequestError(f"{name} must be a finite number", param=name)
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise BadRequestError(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {_show(v)}",
                              param=name)
    return v


def _show(v) -> str:
    """A client value, short, for an error message (a 4,000-digit int becomes a few digits and '...')."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_unsupported(body: dict) -> None:
    for name, neutral in UNSUPPORTED.items():
        v = body.get(name)
        if v is not None and not any(v == n and isinstance(v, bool) == isinstance(n, bool) for n in neutral):
            allowed = " or ".join(json.dumps(n) for n in neutral)
            raise BadRequestError(f"{name}={_show(v)} is not supported by this server (only {allowed} or null)",
                                  param=name)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in stops)):
        raise BadRequestError(f"stop must be a string or a list of at most {MAX_STOP} strings of at most "
                              f"{MAX_STOP_CHARS} characters", param="stop")
    return tuple(stops)


def _sampling(body: dict, max_tokens_field: str) -> SamplingParams:
    max_tokens = body.get(max_tokens_field)
    if max_tokens is None and max_tokens_field == "max_completion_tokens":
        max_tokens_field = "max_tokens"
    temperature = float(_num(body, "temperature", 1.0, 0.0, 2.0))
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise BadRequestError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got "
                              f"{_show(body['temperature'])}", param="temperature")
    return SamplingParams(
        max_tokens=_num(body, max_tokens_field, 16, 1, 2**31, integer=True),
        temperature=temperature,
        top_p=float(_num(body, "top_p", 1.0, MIN_TOP_P, 1.0)),
        top_k=_num(body, "top_k", 0, 0, 2**31, integer=True),
        seed=_num(body, "seed", None, -(2**63), 2**63 - 1, integer=True),
        stop=_stop(body))


def _common(body: dict, max_tokens_field: str) -> tuple[str, SamplingParams, bool, bool]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model must be a non-empty string", param="model")
    _refuse_unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequestError("stream must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequestError("stream_options must be an object", param="stream_options")
    usage = opts.get("include_usage", False)
    if not isinstance(usage, bool):
        raise BadRequestError("stream_options.include_usage must be true or false",
                              param="stream_options.include_usage")
    return model, _sampling(body, max_tokens_field), stream, usage


def _schema(body: dict) -> dict | None:
    try:
        return parse_response_format(body.get("response_format"))
    except InvalidResponseFormatError as e:
        raise BadRequestError(str(e), param="response_format") from e


def _too_long(chars: int, limit: int, param: str) -> None:
    if chars > limit:
        raise BadRequestError(f"the prompt has {chars} characters; this server takes at most {limit}",
                              param=param)


def parse_completion(body: dict, max_prompt_chars: int = MAX_PROMPT_CHARS) -> GenerationRequest:
    model, params, stream, usage = _common(body, "max_tokens")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        pass
    elif not isinstance(prompt, str) or not prompt:
        raise BadRequestError("prompt must be a non-empty string (or one string, or a list of token ids)",
                              param="prompt")
    _too_long(len(prompt), max_prompt_chars, "prompt")
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


def parse_chat(body: dict, max_prompt_chars: int = MAX_PROMPT_CHARS) -> GenerationRequest:
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
                                  f"{_show(m.get('role'))}", param=f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        clean.append({"role": role, "content": _content(m, i)})
    _too_long(sum(len(m["content"]) for m in clean), max_prompt_chars, "messages")
    return GenerationRequest(model, params, stream, usage, messages=tuple(clean), schema=_schema(body))
