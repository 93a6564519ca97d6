"""Pydantic models of the HTTP API's bodies, for its OpenAPI document only.

Requests are validated by hand (protocol.py) so that every refusal is an OpenAI-style 400 naming
its field; these models describe the same contract for clients, docs and schemathesis, and a test
(tests/hostile/test_hostile_openapi_fuzz.py) holds the two together by fuzzing the live server with them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from loraops.serve.protocol import MAX_INPUTS, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_STOP, MAX_STOP_CHARS, MIN_TOP_P
from loraops.serve.tools import MAX_TOOLS

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
    400: "Malformed or out-of-range field (`param` names it), a model id that is not valid, or a route "
         "this server's model does not serve (`unsupported_task`)",
    401: "No key or an invalid key",
    404: "Unknown model, or another tenant's (the same body)",
    413: "The request body is over --max-body-bytes",
    429: "Tenant rate limit (`Retry-After`)",
    500: "This request alone failed: its adapter produced NaN/inf (`non_finite_output`), or a bug",
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
    ignore_eos: bool | None = Field(False, description="Extension (as vLLM and llama.cpp): end-of-sequence "
                                                       "tokens do not end the completion; max_tokens does")
    stop: Stop | None = Field(None, description=f"At most {MAX_STOP} strings of at most {MAX_STOP_CHARS} "
                                                f"characters; never emitted")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, description="Choices to generate, at most the server's --max-choices (each "
                                                  "is a sequence, counted against the token quota); with a seed, "
                                                  "choice i > 0 uses a seed derived from (seed, i)")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, ge=0.01, le=10, description="Extension (HF/CTRL): logits of "
                                                                               "tokens seen in prompt or output "
                                                                               "divided by it (>0) or times it")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=MAX_LOGIT_BIAS, description="Token id (as a string) -> bias added to its logit")
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
    max_tokens: int | None = Field(None, ge=0, description="At most the server's --max-tokens-cap; 0 only with "
                                                           "echo (scoring the prompt)")
    response_format: ResponseFormat | None = None
    best_of: int | None = Field(None, ge=1, description="Generate this many (n <= best_of <= --max-choices) and "
                                                        "return the n with the best mean log-prob per token; "
                                                        "not with stream")
    echo: bool | None = Field(None, description="Return the prompt before the completion (with logprobs: the "
                                                "prompt's log-probs, the first null)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Log-probs of each token and its k "
                                                                           "most likely alternatives (raw model "
                                                                           "distribution, fp32)")
    suffix: Literal[""] | None = Field(None, description="Not supported (insertion)")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON text")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = Field(description="Null only for an assistant message with "
                                                                  "tool_calls")
    tool_calls: list[ToolCall] | None = Field(None, description="Assistant messages: the calls it made")
    tool_call_id: str | None = Field(None, description="Tool messages (required): the call this answers")


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = Field(None, description="A JSON schema of an object (at most 1000 values and 32 KiB "
                                                      "for all tools together)")
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = Field(None, description="Log-probs of each generated token (raw model distribution, "
                                                    "fp32)")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="With logprobs: the k most likely "
                                                                               "alternatives per token")
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice] | None = Field(
        None, description="none / auto (the default with tools) / required / a named function; required and named "
                          "calls are decoded under the function's schema")
    parallel_tool_calls: bool | None = None


class AdapterLoad(BaseModel):
    name: str = Field(description="The model id to serve it under")
    path: str = Field(min_length=1, description="An adapter directory on the server's disk")
    force: bool = Field(False, description="Load even if it is bound to another base (recorded)")


Text = Annotated[str, Field(min_length=1)]


class ClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="An adapter's name or NAME@VERSION, or the base's name if its "
                                                 "checkpoint has a trained head; not a composition")
    input: Union[Text, Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]] = Field(
        description=f"A text, or 1 to {MAX_INPUTS} texts classified together")
    user: str | None = None


REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest, ClassificationRequest, AdapterLoad)


# ---- responses ----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for the prompt's first token (echo)")
    top_logprobs: list[dict[str, float] | None] = Field(description="The k most likely tokens and the token itself")
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str = Field(description='The token\'s text, or "bytes:\\xNN..." when its bytes are not UTF-8 alone')
    logprob: float
    bytes: list[int] | None = Field(description="null for special tokens")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChatLogprobs | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Classification(BaseModel):
    object: Literal["classification"]
    index: int
    label: str = Field(description="The most probable label")
    scores: dict[str, float] = Field(description="Every label's probability (softmax over the head's logits), "
                                                 "in the head's order")


class ClassificationUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassificationList(BaseModel):
    id: str
    object: Literal["list"]
    created: int
    model: str
    data: list[Classification]
    usage: ClassificationUsage


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


def request_body(model: type[BaseModel], media: str = "application/json") -> dict:
    """`openapi_extra` documenting `model` as the request body (validated by hand, not by FastAPI);
    `model` must be one of the models given to `components`."""
    return {"requestBody": {"required": True, "content": {
        media: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def sse(model: type[BaseModel], description: str) -> dict:
    """A 200 that is JSON (`model`) or, with "stream": true, server-sent events."""
    return {"model": model, "description": description,
            "content": {"text/event-stream": {"schema": {"type": "string"}}}}


def components(models: tuple[type[BaseModel], ...] = REQUEST_MODELS) -> dict[str, dict]:
    """JSON schemas of request models (and the models they use), for components/schemas."""
    out: dict[str, dict] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out

