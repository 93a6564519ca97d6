"""Input lines → Records, and Records → output lines.

Four input shapes are accepted, one JSON object per line:
  {"prompt": str, "completion": str}                       kind "completion"
  {"messages": [{"role": ..., "content": str}, ...]}      kind "chat" (OpenAI chat; last turn = assistant)
  {"text": str}                                            kind "text"
  {"text": str, "label": str | int}                       kind "label" (classification; the label is kept as is)
Chat records stay as messages through curation (so rules see the words, not the template) and are
rendered with the base tokenizer's chat template only on output, into prompt (all turns before the last
assistant turn, plus the generation prompt) and completion (the last assistant message and end of turn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

from loraops.errors import ConfigError, DataFormatError

Kind = Literal["chat", "completion", "text", "label"]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Record:
    """One example. `completion` is what the model learns: the completion, the last assistant message,
    or the whole text. `prompt` is set for completion records, `history` (the turns before the last
    assistant message) for chat records; text records have neither."""

    kind: Kind
    line: int
    completion: str
    prompt: str = ""
    history: tuple[Message, ...] = ()
    label: str | int | None = None  # kind "label" only; never normalised or scrubbed

    def texts(self) -> list[str]:
        """Every string of the record, context first."""
        return [self.prompt, *(m.content for m in self.history), self.completion]

    def map(self, fn: Callable[[str], str]) -> Record:
        """The same record with `fn` applied to every string."""
        return replace(self, prompt=fn(self.prompt), completion=fn(self.completion),
                       history=tuple(Message(m.role, fn(m.content)) for m in self.history))


def _string(obj: dict, key: str, line: int, where: str = "") -> str:
    if key not in obj:
        raise DataFormatError(line, f'missing field "{key}"{where}')
    if not isinstance(obj[key], str):
        raise DataFormatError(line, f'field "{key}"{where} must be a string, got {type(obj[key]).__name__}')
    try:
        obj[key].encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\ud800" escapes decode to lone surrogates, which no file can hold
        raise DataFormatError(line, f'field "{key}"{where} holds a lone surrogate ({obj[key][e.start]!a}), '
                                    f"not text") from None
    return obj[key]


def _chat(messages: Any, line: int) -> Record:
    if not isinstance(messages, list):
        raise DataFormatError(line, f'"messages" must be a list, got {type(messages).__name__}')
    if not messages:
        raise DataFormatError(line, '"messages" is empty')
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataFormatError(line, f"message {i} must be an object, got {type(m).__name__}")
        role = _string(m, "role", line, f" in message {i}")
        if role not in ROLES:
            raise DataFormatError(line, f"message {i} has unknown role {role!r} "
                                        f"(expected one of {', '.join(ROLES)})")
        turns.append(Message(role, _string(m, "content", line, f" in message {i}")))
    if turns[-1].role != "assistant":
        raise DataFormatError(line, f"the last message must be from the assistant, not {turns[-1].role!r}")
    return Record("chat", line, completion=turns[-1].content, history=tuple(turns[:-1]))


def parse_line(raw: bytes, line: int) -> Record:
    """One JSONL line (bytes, 1-based line number) → Record; DataFormatError says what is wrong."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataFormatError(line, f"not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(line, f"bad JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # a >4300-digit integer, nesting too deep for the parser
        raise DataFormatError(line, f"bad JSON ({'nested too deeply' if isinstance(e, RecursionError) else e})") \
            from None
    if not isinstance(obj, dict):
        raise DataFormatError(line, f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        return _chat(obj["messages"], line)
    if "prompt" in obj or "completion" in obj:
        return Record("completion", line, prompt=_string(obj, "prompt", line),
                      completion=_string(obj, "completion", line))
    if "label" in obj:
        label = obj["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label.strip()):
            raise DataFormatError(line, f'field "label" must be a non-empty string or an integer, got {label!r}')
        return Record("label", line, completion=_string(obj, "text", line), label=label)
    if "text" in obj:
        return Record("text", line, completion=_string(obj, "text", line))
    raise DataFormatError(line, 'no "messages", "prompt"/"completion" or "text" field')


def render_chat(tokenizer: Any, record: Record) -> tuple[str, str]:
    """Chat record → (prompt, completion) with the tokenizer's chat template; the completion is exactly
    what the template adds for the last assistant turn, so the trainer can mask the prompt."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"line {record.line} is chat data; rendering it needs a tokenizer with a chat "
                          "template (pass --base BASE on the command line, tokenizer= in Python)")
    from jinja2 import TemplateError  # transformers renders chat templates with jinja2

    history = [{"role": m.role, "content": m.content} for m in record.history]
    try:
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*history, {"role": "assistant", "content": record.completion}],
                                             tokenize=False)
    except TemplateError as e:  # e.g. Gemma's "Conversation roles must alternate user/assistant/..."
        raise DataFormatError(record.line, f"the chat template refuses this conversation: {e}") from None
    if not full.startswith(prompt):
        raise ConfigError("the tokenizer's chat template renders a conversation differently from its prefix; "
                          "prompt and completion cannot be separated")
    return prompt, full[len(prompt):]


def to_output(record: Record, tokenizer: Any = None) -> dict[str, str]:
    """The output line: {"text"} for text records, {"text", "label"} for labelled ones,
    {"prompt", "completion"} otherwise."""
    if record.kind == "text":
        return {"text": record.completion}
    if record.kind == "label":
        return {"text": record.completion, "label": record.label}
    if record.kind == "chat":
        prompt, completion = render_chat(tokenizer, record)
        return {"prompt": prompt, "completion": completion}
    return {"prompt": record.prompt, "completion": record.completion}


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with (Gemma's <end_of_turn>,
    ChatML's <|im_end|>), or None (no template, or the turn ends in plain text)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    from jinja2 import TemplateError

    marker = "0f9d2c"  # content no template rewrites
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except (TemplateError, ValueError):  # a template that refuses this minimal conversation
        return None
    after = text[text.rfind(marker) + len(marker):].lstrip()
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = getattr(tokenizer, "added_tokens_decoder", {})
    return ids[0] if ids and ids[0] in special else None
