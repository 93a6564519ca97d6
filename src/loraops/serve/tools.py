"""Tool (function) calling for /v1/chat/completions: the request's `tools` and `tool_choice`, how they
reach the model through the base's chat template, the grammar its calls are decoded under, and
the parser that turns its reply back into OpenAI's `tool_calls`.

One protocol for every base, Hermes-style (the convention of Qwen 2.5, Hermes and many tool-tuned
open models): the default base, Gemma 3, has no tool syntax of its own. The functions are listed in
a system message (`preamble`); a call is the text

    <tool_call>{"name": "NAME", "arguments": {...}}</tool_call>

(several calls: one per line); a tool's result goes back as `<tool_response>{...}</tool_response>`
in a user turn, and an earlier assistant turn's `tool_calls` as the calls' text, so the
conversation goes through the base's template with the roles it knows (user / assistant / system).

Decoding (`tool_grammar`, llguidance Lark):
- `required`: the reply is one call (or, with parallel_tool_calls, one or more) of any function,
  its arguments decoded under that function's JSON schema: they always parse and validate, unless
  max_tokens cuts the call off (finish_reason "length").
- a named function: exactly one call of that function, the same way.
- `auto`: free text, with a lazy trigger: once the model writes `<tool_call>`, the rest of the
  call is constrained like `required`'s. The model's choice is detected by that marker alone: a
  reply holding a call has finish_reason "tool_calls"; text around calls is the message content.
- `none`: the tools are listed but the reply is plain text, never parsed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from loraops.serve.errors import BadRequestError
from loraops.serve.grammar import InvalidResponseFormatError, check_schema

MAX_TOOLS = 128                                      # OpenAI's limit
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")            # OpenAI's rule for function names
TRIGGER, CALL_END, SEPARATOR = "<tool_call>", "}</tool_call>", "\n"
# Arguments decode compactly: a model cannot spend its budget on whitespace, and the text is stable.
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def call_begin(name: str) -> str:
    return f'{TRIGGER}{{"name": "{name}", "arguments": '


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it (arguments: a JSON text)."""
    return call_begin(name) + arguments + CALL_END


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict              # a JSON schema of an object


@dataclass(frozen=True)
class ToolSpec:
    functions: tuple[Function, ...]
    choice: str                   # "none" | "auto" | "required" | "function" (the one named)
    named: str | None
    parallel: bool

    @property
    def parses(self) -> bool:
        """The reply may hold calls (so it is parsed, and decoded under `tool_grammar`)."""
        return self.choice != "none"


# ---- the request -----------------------------------------------------------------------------


def parse_tools(body: dict) -> ToolSpec | None:
    """`tools`, `tool_choice`, `parallel_tool_calls` of a chat request -> a ToolSpec, or None when
    no tools are given. Raises BadRequestError naming the field."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequestError("parallel_tool_calls must be true or false", param="parallel_tool_calls")
    if tools is None or tools == []:
        if choice not in (None, "none"):
            raise BadRequestError("tool_choice needs tools", param="tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise BadRequestError(f"tools must be a list of at most {MAX_TOOLS} tools", param="tools")
    functions = tuple(_function(t, i) for i, t in enumerate(tools))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise BadRequestError("tools must have distinct function names", param="tools")
    try:
        check_schema({"tools": [f.parameters for f in functions]}, meta=False)   # all together: one bound
    except InvalidResponseFormatError as e:
        raise BadRequestError(f"tools: {e}", param="tools") from e
    kind, named = _choice(choice, names)
    return ToolSpec(functions, kind, named, True if parallel is None else parallel)


def _function(tool, i: int) -> Function:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise BadRequestError(f"{where}.type must be \"function\" (the only kind of tool this server calls)",
                              param=f"{where}.type")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise BadRequestError(f"{where}.function must be an object", param=f"{where}.function")
    name, description = fn.get("name"), fn.get("description")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadRequestError(f"{where}.function.name must be 1-64 letters, digits, '_' or '-'",
                              param=f"{where}.function.name")
    if description is not None and not isinstance(description, str):
        raise BadRequestError(f"{where}.function.description must be a string", param=f"{where}.function.description")
    params = fn.get("parameters")
    params = {"type": "object", "properties": {}} if params is None else params
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise BadRequestError(f"{where}.function.parameters must be a JSON schema of an object",
                              param=f"{where}.function.parameters")
    try:
        check_schema(params)
    except InvalidResponseFormatError as e:
        raise BadRequestError(f"{where}.function.parameters: {e}", param=f"{where}.function.parameters") from e
    return Function(name, description, {"type": "object", **params})


def _choice(choice, names: list[str]) -> tuple[str, str | None]:
    if choice is None:
        return "auto", None
    if choice in ("none", "auto", "required"):
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in names:
            raise BadRequestError(f"tool_choice names {json.dumps(name)[:70]}, which is not one of the tools",
                                  param="tool_choice")
        return "function", name
    raise BadRequestError('tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                          '{"name": ...}} (allowed_tools and custom tools are not supported)', param="tool_choice")


# ---- the prompt ------------------------------------------------------------------------------


def preamble(spec: ToolSpec) -> str:
    """The system text that lists the functions (compact JSON: the prompt is the model's budget too)."""
    listing = "\n".join(json.dumps({"name": f.name, **({"description": f.description} if f.description else {}),
                                    "parameters": f.parameters}, separators=(",", ":")) for f in spec.functions)
    return (f"Functions (name, description, JSON schema of the arguments):\n{listing}\nTo call one, reply "
            f'{TRIGGER}{{"name": NAME, "arguments": {{...}}}}</tool_call>, one call per line. Results come back in '
            "<tool_response> blocks.")


def render_messages(messages: tuple[dict, ...], spec: ToolSpec | None) -> list[dict]:
    """Parsed chat messages (protocol.parse_chat) -> messages for the base's chat template, in the
    roles it knows: the tool preamble joins the system message; an assistant turn's tool_calls become
    their text; consecutive tool results become one user turn of <tool_response> blocks."""
    names = {c["id"]: c["name"] for m in messages for c in m.get("tool_calls", ())}
    out: list[dict] = []
    for m in messages:
        if m["role"] == "tool":
            block = "<tool_response>" + json.dumps({"name": names.get(m["tool_call_id"]),
                                                    "content": m["content"]}) + "</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += SEPARATOR + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        elif m.get("tool_calls"):
            calls = SEPARATOR.join(call_text(c["name"], c["arguments"]) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m["content"] or "") + calls})
        else:
            out.append({"role": m["role"], "content": m["content"] or ""})
    for m in out:
        m.pop("tool_results", None)
    if spec is not None:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": preamble(spec) + "\n\n" + out[0]["content"]}
        else:
            out.insert(0, {"role": "system", "content": preamble(spec)})
    return out


# ---- decoding --------------------------------------------------------------------------------


def tool_grammar(spec: ToolSpec) -> str | None:
    """The Lark grammar (llguidance) a reply is decoded under, None for tool_choice "none"."""
    if not spec.parses:
        return None
    fns = [f for f in spec.functions if spec.choice != "function" or f.name == spec.named]
    lines = ["%llguidance {}"]
    for i, f in enumerate(fns):
        schema = json.dumps({**f.parameters, "x-guidance": COMPACT})
        body = f"{json.dumps(call_begin(f.name)[len(TRIGGER):])} %json {schema} {json.dumps(CALL_END)}"
        if spec.choice == "auto":                       # free text until the trigger (a lazy lexeme)
            lines += [f"call_{i}_trig[lazy]: TEXT {json.dumps(TRIGGER)}", f"call_{i}: call_{i}_trig {body}"]
        else:
            lines.append(f"call_{i}: {json.dumps(TRIGGER)} {body}")
    any_call = " | ".join(f"call_{i}" for i in range(len(fns)))
    if spec.choice == "auto":
        lines += [f"start: ({any_call}){'*' if spec.parallel else '?'} tail", "tail: TEXT", r"TEXT: /(.|\n)*/"]
    elif spec.parallel and spec.choice == "required":
        lines += [f"start: call (\"\\n\" call)*", f"call: {any_call}"]
    else:
        lines += [f"start: {any_call}"]
    return "\n".join(lines) + "\n"


# ---- the reply -------------------------------------------------------------------------------


@dataclass
class Call:
    name: str
    arguments: str = ""
    complete: bool = False


class ToolCallParser:
    """A reply's text, fed in pieces as it is generated -> its content and its calls, as deltas:
    ("content", text), ("call", index, name) when a call's name is known, ("arguments", index, text).
    Text that may be the start of a call is held back until it is known not to be one. The end of
    a call's arguments is found by scanning the JSON (strings and escapes respected), so arguments
    that happen to contain "</tool_call>" are still whole."""

    def __init__(self, names: list[str]):
        self.begins = {call_begin(n): n for n in names}
        self.calls: list[Call] = []
        self.content = ""
        self._buf, self._state = "", "text"         # text | head | args | tail | between
        self._depth, self._in_string, self._escape = 0, False, False

    def feed(self, text: str) -> list[tuple]:
        self._buf += text
        out: list[tuple] = []
        while self._buf:
            before = (self._state, len(self._buf))
            getattr(self, f"_{self._state}")(out)
            if (self._state, len(self._buf)) == before:          # waiting for more text
                break
        return out

    def finish(self) -> list[tuple]:
        """At the end of the reply: text held back is content (a call cut off stays incomplete)."""
        out: list[tuple] = []
        if self._state in ("text", "head") and self._buf:
            self._emit_content(self._buf, out)
        self._buf = ""
        return out

    def _emit_content(self, text: str, out: list) -> None:
        self.content += text
        out.append(("content", text))

    def _text(self, out: list) -> None:
        at = self._buf.find(TRIGGER)
        if at >= 0:
            if at:
                self._emit_content(self._buf[:at], out)
            self._buf, self._state = self._buf[at:], "head"
            return
        keep = next((k for k in range(min(len(TRIGGER) - 1, len(self._buf)), 0, -1)
                     if TRIGGER.startswith(self._buf[-k:])), 0)
        if len(self._buf) > keep:
            self._emit_content(self._buf[:len(self._buf) - keep], out)
            self._buf = self._buf[len(self._buf) - keep:]

    def _head(self, out: list) -> None:
        for begin, name in self.begins.items():
            if self._buf.startswith(begin):
                self.calls.append(Call(name))
                out.append(("call", len(self.calls) - 1, name))
                self._buf, self._state = self._buf[len(begin):], "args"
                self._depth, self._in_string, self._escape = 0, False, False
                return
        if not any(b.startswith(self._buf) for b in self.begins):    # not a call after all: content
            self._emit_content(TRIGGER, out)
            self._buf, self._state = self._buf[len(TRIGGER):], "text"

    def _args(self, out: list) -> None:
        call, i = self.calls[-1], 0
        for i, ch in enumerate(self._buf, 1):
            if self._in_string:
                self._escape, self._in_string = (False, True) if self._escape else (ch == "\\", ch != '"')
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    break
        piece, done = self._buf[:i], self._depth == 0 and i > 0 and self._buf[i - 1] in "}]"
        call.arguments += piece
        out.append(("arguments", len(self.calls) - 1, piece))
        self._buf = self._buf[i:]
        if done:
            self._state = "tail"

    def _tail(self, out: list) -> None:
        if self._buf.startswith(CALL_END):
            self.calls[-1].complete = True
            self._buf, self._state = self._buf[len(CALL_END):], "between"
        elif not CALL_END.startswith(self._buf):
            self._state = "text"                                   # malformed (cannot happen under the grammar)

    def _between(self, out: list) -> None:
        """After a call: the line break before the next call is not content."""
        nxt = SEPARATOR + TRIGGER
        if self._buf.startswith(nxt):
            self._buf, self._state = self._buf[len(SEPARATOR):], "head"
        elif not nxt.startswith(self._buf):
            self._state = "text"
