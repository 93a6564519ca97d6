"""Pydantic models of the fine-tuning API's bodies, for the OpenAPI document only (as serve/schemas.py
for the rest of the API).

The routes check requests by hand (spec.py, routes.py) so that every refusal is an OpenAI-style
400 naming its field, and build responses in objects.py; these models describe the same contract
for clients and schemathesis. Two tests hold them to the code: tests/hostile/test_hostile_openapi_fuzz.py
fuzzes the live server with them, and tests/integration/test_fine_tuning_api.py checks a finished
job's objects against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from loraops.finetune.ids import RESULTS_FILE, TRAINING_FILE
from loraops.finetune.spec import AUTO, LIMITS, MAX_ALPHA, MAX_SEED, Options
from loraops.serve.schemas import ErrorBody


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


WHEN = {
    400: "A malformed or out-of-range field or parameter (`param` names it), an upload that is not a training "
         "file (its first bad lines), or what the object's state refuses (deleting a file a job uses, "
         "cancelling a finished job)",
    401: "No key or an invalid key",
    404: "An unknown file or job, or another tenant's (the same body); or the server has no registry",
    413: "The body is over --max-body-bytes (JSON) or the file over --max-upload-bytes (upload)",
    429: "A fine-tuning quota: unfinished jobs or bytes of all files (`quota_exceeded`)",
}


def errors(*statuses: int) -> dict:
    """FastAPI `responses=` for these error statuses of the fine-tuning routes, all with ErrorBody."""
    return {s: {"model": ErrorBody, "description": WHEN[s]} for s in statuses}


def ok(model: type[BaseModel], description: str) -> dict:
    """FastAPI `responses=` documenting the 200 body (the routes return plain dicts: objects.py)."""
    return {200: {"model": model, "description": description}}


def page_parameters(default: int, most: int, order: bool = False) -> dict:
    """`openapi_extra` documenting the list parameters, which the routes read and check by hand (400)."""
    params = [{"name": "after", "in": "query", "required": False, "description": "The id of the last object "
               "of the previous page (one of this list's)", "schema": {"type": "string"}},
              {"name": "limit", "in": "query", "required": False, "description": f"Page size (default {default})",
               "schema": {"type": "integer", "minimum": 1, "maximum": most}}]
    if order:
        params += [{"name": "order", "in": "query", "required": False, "description": "By creation time",
                    "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"}},
                   {"name": "purpose", "in": "query", "required": False, "description": "Only files of this purpose",
                    "schema": {"type": "string"}}]
    return {"parameters": params}


# ---- requests -----------------------------------------------------------------------------------


class FileUpload(BaseModel):
    """POST /v1/files, as multipart/form-data (other fields are ignored, as OpenAI does)."""

    file: bytes = Field(description="JSONL: one record per line (chat `messages`, `prompt`/`completion`, `text`)")
    purpose: Literal[TRAINING_FILE]


def _bounded(number: type, name: str) -> Any:
    lo, hi = LIMITS[name]
    return Union[Literal["auto"], Annotated[number, Field(ge=lo, le=hi)]]


def _auto(name: str, unit: str = "") -> Any:
    lo, hi = LIMITS[name]
    return Field("auto", description=f"{lo:g} to {hi:g}{unit}; 'auto': {AUTO[name]:g}")


Epochs, BatchSize, Multiplier = _bounded(int, "n_epochs"), _bounded(int, "batch_size"), \
    _bounded(float, "learning_rate_multiplier")


class Hyperparameters(_Strict):
    n_epochs: Epochs = _auto("n_epochs")
    batch_size: BatchSize = _auto("batch_size", " packed rows")
    learning_rate_multiplier: Multiplier = _auto("learning_rate_multiplier", " (× 2e-4)")


class Supervised(_Strict):
    hyperparameters: Hyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised"]
    supervised: Supervised | None = None


class LoraopsOptions(_Strict):
    """Our extension (the openai client sends it with extra_body={"loraops": {...}})."""

    rank: int = Field(Options.rank, ge=1, le=256, description="At most the server's --max-rank")
    alpha: float | None = Field(None, gt=0, le=MAX_ALPHA, description="None: 2 × rank")
    targets: str = Field(Options.targets, min_length=1, max_length=256,
                         description="all-linear, module-name suffixes, or a regex")
    replay: int = Field(Options.replay, ge=0, le=100_000, description="General-text passages mixed in")
    auto_promote: bool = Field(Options.auto_promote, description="To production if the promotion gate passes")
    checkpoint_every: int = Field(Options.checkpoint_every, ge=1, le=1_000_000)


class JobCreateRequest(_Strict):
    model: str = Field(min_length=1, max_length=400, description="The server's base, one of your adapters "
                                                                 "(name or name@V) or one of your ft: models")
    training_file: str = Field(min_length=1, max_length=64, description="A file id with purpose fine-tune")
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    hyperparameters: Hyperparameters | None = Field(None, description="Or in method.supervised, not both")
    method: Method | None = None
    suffix: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16, description="At most 16 pairs of strings")
    integrations: list[Any] | None = Field(None, max_length=0, description="Not supported: only []")
    loraops: LoraopsOptions | None = None


REQUEST_MODELS = (FileUpload, JobCreateRequest)


# ---- responses ----------------------------------------------------------------------------------


class FileObject(_Strict):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: Literal[TRAINING_FILE, RESULTS_FILE]
    status: Literal["processed"]
    status_details: None
    expires_at: None


class _Page(_Strict):
    object: Literal["list"]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileList(_Page):
    data: list[FileObject]


class FileDeleted(_Strict):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


class JobError(_Strict):
    code: str
    message: str
    param: str | None


class ResolvedHyperparameters(_Strict):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class SupervisedMethod(_Strict):
    hyperparameters: ResolvedHyperparameters


class JobMethod(_Strict):
    type: Literal["supervised"]
    supervised: SupervisedMethod


class GateVerdict(_Strict):
    passed: bool
    reason: str
    auto_promote: bool
    promoted: bool


class JobExtension(_Strict):
    """The job's `loraops` object: its options (resolved) and what the pipeline found."""

    rank: int
    alpha: float
    targets: str
    replay: int
    auto_promote: bool
    checkpoint_every: int
    base: str
    parent: str | None = Field(description="The registry version the job continued from")
    registry_version: str | None = Field(description="name@V of the final adapter")
    curation: dict[str, Any] | None = Field(description="Lines in, kept, split, what each rule dropped, the "
                                                        "dataset's sha256")
    evaluation: dict[str, Any] | None = Field(description="Domain metric of base and adapter, forgetting")
    gate: GateVerdict | None


JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


class FineTuningJob(_Strict):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None = Field(description="ft:<base>:<tenant>:<suffix>:<job id>, once succeeded")
    finished_at: int | None
    hyperparameters: ResolvedHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: None
    integrations: list[Any] = Field(max_length=0)
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    method: JobMethod
    loraops: JobExtension


class JobList(_Page):
    data: list[FineTuningJob]


class JobEvent(_Strict):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = Field(description="metrics events: step, train_loss, learning_rate, tokens, "
                                                    "tokens_per_s (or step, valid_loss)")
    type: Literal["message", "metrics"]


class EventList(_Page):
    data: list[JobEvent]


class CheckpointMetrics(_Strict):
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None


class Checkpoint(_Strict):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="A model id the job's tenant can call")
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(_Page):
    data: list[Checkpoint]
