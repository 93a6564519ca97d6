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
from dataclasses import dataclass, replace

from loraops.serve.config import HttpLimits
from loraops.serve.errors import BadRequestError
from loraops.serve.grammar import InvalidResponseFormatError, parse_response_format
from loraops.serve.sampling import SamplingParams
from loraops.serve.tools import ToolSpec, parse_tools

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP, MAX_STOP_CHARS = 4, 256
MAX_DEPTH = 64                     # JSON nesting of a request body; OpenAI's bodies need < 20
MAX_PROMPT_CHARS = HttpLimits.max_prompt_chars
MAX_CHOICES = HttpLimits.max_choices
MIN_TEMPERATURE = 1e-5             # below this (and above 0), logits / temperature overflow fp32
MIN_TOP_P = 1e-6                   # below this, top_p rounds to 0 in fp32 and keeps no token
MAX_INPUTS = 256                   # texts in one /v1/classifications request
MAX_LOGPROBS = 20                  # top log-probs per token (OpenAI's bound for chat)
MAX_LOGIT_BIAS = 1024              # entries of logit_bias

# Fields this server does not implement on a route, each with the values that change nothing (and are
# accepted, like null). Anything else is refused with a 400 naming the field: a request never gets an
# answer as if a parameter had been applied when it was not. Implementing one = deleting its row.
UNSUPPORTED: dict[str, tuple] = {
    "suffix": ("",),               # insertion needs a fill-in-the-middle model and prompt format
    "functions": ([],),            # deprecated by OpenAI in favour of tools (supported on chat)
    "function_call": ("none",),
}
UNSUPPORTED_COMPLETIONS: dict[str, tuple] = {
    **UNSUPPORTED,
    "top_logprobs": (0,),          # chat's; completions take logprobs: k
    "tools": ([],),                # tools are a chat feature
    "tool_choice": ("none",),
    "parallel_tool_calls": (True, False),
}
UNSUPPORTED_CHAT: dict[str, tuple] = {
    **UNSUPPORTED,
    "best_of": (1,),               # completions only (as at OpenAI)
    "echo": (False,),
    "modalities": (["text"],),     # text models
    "audio": (),                   # () : only null is accepted
    "web_search_options": (),
    "moderation": (),
    "verbosity": (),               # steering hints of OpenAI's reasoning models: not honoured, so refused
    "reasoning_effort": (),
}


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    params: SamplingParams        # the engine's parameters of choice 0 (sampling.choice_params: the others)
    stream: bool
    include_usage: bool
    prompt: str | list[int] | None = None            # /v1/completions
    messages: tuple[dict, ...] | None = None         # /v1/chat/completions
    schema: dict | None = None                       # response_format json_object / json_schema
    n: int = 1                                       # choices returned
    best_of: int = 1                                 # choices generated (the n with the best mean logprob return)
    echo: bool = False                               # completions: the prompt before the completion
    logprobs: int | None = None                      # top log-probs per token the client asked for; None: none
    tools: ToolSpec | None = None                    # chat: tools, tool_choice, parallel_tool_calls


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


def _refuse_unsupported(body: dict, table: dict[str, tuple]) -> None:
    for name, neutral in table.items():
        v = body.get(name)
        if v is not None and not any(v == n and isinstance(v, bool) == isinstance(n, bool) for n in neutral):
            allowed = "".join(json.dumps(n) + " or " for n in neutral)
            raise BadRequestError(f"{name}={_show(v)} is not supported by this server on this route (only "
                                  f"{allowed}null)", param=name)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequestError(f"{name} must be true or false, got {_show(v)}", param=name)
    return v


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
        raise BadRequestError(f"logit_bias must be an object of at most {MAX_LOGIT_BIAS} token ids (as strings) "
                              "to biases", param="logit_bias")
    out = []
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise BadRequestError(f"logit_bias keys must be token ids, got {_show(key)}", param="logit_bias")
        try:
            out.append((int(key), float(_num(bias, key, 0, -100, 100))))
        except BadRequestError as e:
            raise BadRequestError(f"logit_bias[{key}]: {e.message}", param="logit_bias") from None
    return tuple(sorted(out))


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


def _sampling(body: dict, max_tokens_field: str, min_tokens: int = 1) -> SamplingParams:
    max_tokens = body.get(max_tokens_field)
    if max_tokens is None and max_tokens_field == "max_completion_tokens":
        max_tokens_field = "max_tokens"
    temperature = float(_num(body, "temperature", 1.0, 0.0, 2.0))
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise BadRequestError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got "
                              f"{_show(body['temperature'])}", param="temperature")
    return SamplingParams(
        max_tokens=_num(body, max_tokens_field, 16, min_tokens, 2**31, integer=True),
        temperature=temperature,
        top_p=float(_num(body, "top_p", 1.0, MIN_TOP_P, 1.0)),
        top_k=_num(body, "top_k", 0, 0, 2**31, integer=True),
        seed=_num(body, "seed", None, -(2**63), 2**63 - 1, integer=True),
        stop=_stop(body),
        logit_bias=_logit_bias(body),
        presence_penalty=float(_num(body, "presence_penalty", 0.0, -2.0, 2.0)),
        frequency_penalty=float(_num(body, "frequency_penalty", 0.0, -2.0, 2.0)),
        repetition_penalty=float(_num(body, "repetition_penalty", 1.0, 0.01, 10.0)),
        ignore_eos=_bool(body, "ignore_eos"))


def _common(body: dict, max_tokens_field: str, table: dict[str, tuple],
            min_tokens: int = 1) -> tuple[str, SamplingParams, bool, bool]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model must be a non-empty string", param="model")
    _refuse_unsupported(body, table)
    stream = _bool(body, "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequestError("stream_options must be an object", param="stream_options")
    usage = opts.get("include_usage", False)
    if not isinstance(usage, bool):
        raise BadRequestError("stream_options.include_usage must be true or false",
                              param="stream_options.include_usage")
    return model, _sampling(body, max_tokens_field, min_tokens), stream, usage


def _choices(body: dict, stream: bool, max_choices: int, best_of_field: bool) -> tuple[int, int]:
    """(n, best_of): 1 <= n <= best_of <= max_choices; best_of generates server-side, so not streamed."""
    n = _num(body, "n", 1, 1, max_choices, integer=True)
    best_of = _num(body, "best_of", n, 1, max_choices, integer=True) if best_of_field else n
    if best_of < n:
        raise BadRequestError(f"best_of must be at least n ({n}), got {best_of}", param="best_of")
    if stream and best_of > n:
        raise BadRequestError("best_of > n cannot be streamed (the best choices are known only at the end)",
                              param="best_of")
    return n, best_of


def _engine_params(params: SamplingParams, logprobs: int | None, echo: bool, n: int, best_of: int) -> SamplingParams:
    """The engine computes the chosen tokens' log-probs also for best_of's ranking."""
    return replace(params, logprobs=logprobs if logprobs is not None else 0 if best_of > n else None,
                   prompt_logprobs=logprobs if echo else None)


def _schema(body: dict) -> dict | None:
    try:
        return parse_response_format(body.get("response_format"))
    except InvalidResponseFormatError as e:
        raise BadRequestError(str(e), param="response_format") from e


def _too_long(chars: int, limit: int, param: str) -> None:
    if chars > limit:
        raise BadRequestError(f"the prompt has {chars} characters; this server takes at most {limit}",
                              param=param)


def parse_completion(body: dict, max_prompt_chars: int = MAX_PROMPT_CHARS,
                     max_choices: int = MAX_CHOICES) -> GenerationRequest:
    echo = _bool(body, "echo")
    if not echo and body.get("max_tokens") == 0 and not isinstance(body.get("max_tokens"), bool):
        raise BadRequestError("max_tokens must be at least 1 (0 only with echo, to score the prompt)",
                              param="max_tokens")
    model, params, stream, usage = _common(body, "max_tokens", UNSUPPORTED_COMPLETIONS, min_tokens=0 if echo else 1)
    n, best_of = _choices(body, stream, max_choices, best_of_field=True)
    logprobs = _num(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        pass
    elif not isinstance(prompt, str) or not prompt:
        raise BadRequestError("prompt must be a non-empty string (or one string, or a list of token ids)",
                              param="prompt")
    _too_long(len(prompt), max_prompt_chars, "prompt")
    return GenerationRequest(model, _engine_params(params, logprobs, echo, n, best_of), stream, usage,
                             prompt=prompt, schema=_schema(body), n=n, best_of=best_of, echo=echo, logprobs=logprobs)


def _content(m: dict, i: int, optional: bool = False) -> str | None:
    c = m.get("content")
    if isinstance(c, str) or (c is None and optional):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    raise BadRequestError(f"messages[{i}].content must be a string or a list of text parts",
                          param=f"messages[{i}].content")


def _tool_calls(m: dict, i: int) -> list[dict]:
    """An assistant message's tool_calls -> [{"id", "name", "arguments"}] (arguments: JSON text)."""
    calls = m.get("tool_calls")
    if calls is None:
        return []
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise BadRequestError(f"{where} must be a list", param=where)
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not (isinstance(c, dict) and c.get("type", "function") == "function" and isinstance(c.get("id"), str)
                and isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)):
            raise BadRequestError(f"{where}[{j}] must be {{\"id\", \"type\": \"function\", \"function\": "
                                  f"{{\"name\", \"arguments\"}}}} with strings", param=f"{where}[{j}]")
        out.append({"id": c["id"], "name": fn["name"], "arguments": fn["arguments"]})
    return out


def _message(m, i: int) -> dict:
    if not isinstance(m, dict):
        raise BadRequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
    if m.get("role") not in ROLES:
        raise BadRequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got "
                              f"{_show(m.get('role'))}", param=f"messages[{i}].role")
    role = "system" if m["role"] == "developer" else m["role"]
    if role == "assistant":
        calls = _tool_calls(m, i)
        content = _content(m, i, optional=bool(calls))
        return {"role": role, "content": content, "tool_calls": calls} if calls else {"role": role, "content": content}
    if role == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise BadRequestError(f"messages[{i}].tool_call_id must be a string (the call this answers)",
                                  param=f"messages[{i}].tool_call_id")
        return {"role": role, "content": _content(m, i), "tool_call_id": m["tool_call_id"]}
    return {"role": role, "content": _content(m, i)}


def _chars(m: dict) -> int:
    return len(m["content"] or "") + sum(len(c["name"]) + len(c["arguments"]) for c in m.get("tool_calls", ()))


def parse_chat(body: dict, max_prompt_chars: int = MAX_PROMPT_CHARS, max_choices: int = MAX_CHOICES) -> GenerationRequest:
    model, params, stream, usage = _common(body, "max_completion_tokens", UNSUPPORTED_CHAT)
    n, _ = _choices(body, stream, max_choices, best_of_field=False)
    want_logprobs = _bool(body, "logprobs")
    top = _num(body, "top_logprobs", None, 0, MAX_LOGPROBS, integer=True)
    if top and not want_logprobs:
        raise BadRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    clean = [_message(m, i) for i, m in enumerate(messages)]
    _too_long(sum(_chars(m) for m in clean), max_prompt_chars, "messages")
    tools, schema = parse_tools(body), _schema(body)
    if tools is not None and tools.parses and schema is not None:
        raise BadRequestError("response_format cannot be combined with tools unless tool_choice is \"none\"",
                              param="response_format")
    logprobs = (top or 0) if want_logprobs else None
    return GenerationRequest(model, _engine_params(params, logprobs, False, n, n), stream, usage,
                             messages=tuple(clean), schema=schema, n=n, best_of=n, logprobs=logprobs, tools=tools)


@dataclass(frozen=True)
class ClassificationRequest:
    model: str
    inputs: tuple[str, ...]


def parse_classification(body: dict, max_chars: int = MAX_PROMPT_CHARS) -> ClassificationRequest:
    """/v1/classifications: {"model": str, "input": str | [str, ...]} (other fields are ignored)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model must be a non-empty string", param="model")
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
        raise BadRequestError(f"input must be a string or a list of 1 to {MAX_INPUTS} strings", param="input")
    for i, text in enumerate(inputs):
        if not isinstance(text, str) or not text:
            raise BadRequestError(f"input[{i}] must be a non-empty string", param=f"input[{i}]")
    chars = sum(map(len, inputs))
    if chars > max_chars:
        raise BadRequestError(f"the input has {chars} characters in all; this server takes at most {max_chars}",
                              param="input")
    return ClassificationRequest(model, tuple(inputs))
