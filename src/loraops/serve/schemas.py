"""Pydantic models of the HTTP API's bodies, for its OpenAPI document only.

Requests are validated by hand (protocol.py) so that every refusal is an OpenAI-style 400 naming
its field; these models describe the same contract for clients, docs and schemathesis, and a test
(tests/hostile/test_hostile_openapi_fuzz.py) holds the two together by fuzzing the live server with them.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from loraops.serve.protocol import MAX_STOP, MAX_STOP_CHARS, MIN_TOP_P

# ---- errors -------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorBody(BaseModel):
    """Every error: {"error": {"message", "type", "code", "param"}}, as OpenAI sends them."""

    error: ErrorDetail


ERROR_WHEN = {
    400: "Malformed or out-of-range field (`param` names it), or a model id that is not valid",
    401: "No key or an invalid key",
    404: "Unknown model, or another tenant's (the same body)",
    413: "The request body is over --max-body-bytes",
    429: "Tenant rate limit (`Retry-After`)",
    503: "The queue is full, or the adapter could not be loaded (`Retry-After`)",
}


def errors(*statuses: int) -> dict:
    """FastAPI `responses=` for these error statuses, all with ErrorBody."""
    return {s: {"model": ErrorBody, "description": ERROR_WHEN[s]} for s in statuses}


# ---- requests -----------------------------------------------------------------------------------

Stop = Union[str, list[str]]


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="An adapter's name, NAME@VERSION, the base's name, or a "
                                                 "composition A:0.7+B:0.3 (2-4 parts, weights in [-4, 4])")
    max_tokens: int | None = Field(None, ge=1, description="At most the server's --max-tokens-cap")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; else at least 1e-5")
    top_p: float | None = Field(None, ge=MIN_TOP_P, le=1)
    top_k: int | None = Field(None, ge=0, description="Extension: keep the k most likely tokens (0: all)")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: Stop | None = Field(None, description=f"At most {MAX_STOP} strings of at most {MAX_STOP_CHARS} "
                                                f"characters; never emitted")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = Field(None, description="Only 1")
    presence_penalty: Literal[0] | None = Field(None, description="Not supported: only 0")
    frequency_penalty: Literal[0] | None = Field(None, description="Not supported: only 0")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="Not supported: only {}")
    user: str | None = None


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    schema_: dict = Field(alias="schema", description="A JSON schema (at most 1000 values, 32 KiB)")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Union[TextFormat, JsonObjectFormat, JsonSchemaFormat]


class CompletionRequest(_Request):
    prompt: Union[str, list[str], list[int]] = Field(description="A string, a list of one string, or token ids")
    response_format: ResponseFormat | None = None
    best_of: Literal[1] | None = Field(None, description="Not supported: only 1")
    echo: Literal[False] | None = Field(None, description="Not supported")
    logprobs: Literal[0] | None = Field(None, description="Not supported")
    suffix: Literal[""] | None = Field(None, description="Not supported")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = Field(None, description="Not supported")


class AdapterLoad(BaseModel):
    name: str = Field(description="The model id to serve it under")
    path: str = Field(min_length=1, description="An adapter directory on the server's disk")
    force: bool = Field(False, description="Load even if it is bound to another base (recorded)")


REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest, AdapterLoad)


# ---- responses ----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    base: str | None = Field(None, description="Only for the metrics or admin key")
    adapters: int | None = Field(None, description="Only for the metrics or admin key")


class AdapterInfo(BaseModel):
    name: str
    path: str
    rank: int
    resident: bool
    slot: int | None


class AdapterList(BaseModel):
    base: str
    adapters: list[AdapterInfo]


class AdapterLoaded(BaseModel):
    name: str
    path: str
    rank: int


class AdapterDeleted(BaseModel):
    name: str
    deleted: Literal[True]


def request_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` documenting `model` as the JSON request body (validated by hand, not by FastAPI)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def sse(model: type[BaseModel], description: str) -> dict:
    """A 200 that is JSON (`model`) or, with "stream": true, server-sent events."""
    return {"model": model, "description": description,
            "content": {"text/event-stream": {"schema": {"type": "string"}}}}


def components() -> dict[str, dict]:
    """JSON schemas of the request models (and the models they use), for components/schemas."""
    out: dict[str, dict] = {}
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out

