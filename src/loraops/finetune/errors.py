"""Errors of the fine-tuning API. ServeErrors, so the server answers each with its status and an
OpenAI error body; JobFailed is what a worker records on a job that fails."""

from __future__ import annotations

from loraops.errors import LoraOpsError
from loraops.serve.errors import BadRequestError, ServeError


class ObjectNotFoundError(ServeError):
    """An unknown file or job id — and, on purpose, also one that belongs to another tenant."""

    status, code = 404, "not_found"


class InvalidFileError(BadRequestError):
    """An upload that is not a training file: the message lists its first bad lines."""

    code = "invalid_file"


class FileTooLargeError(ServeError):
    status, code = 413, "file_too_large"


class QuotaExceededError(ServeError):
    """A tenant's fine-tuning quota (tenants file `fine_tuning`) would be exceeded."""

    status, code, kind = 429, "quota_exceeded", "rate_limit_error"


class FineTuningDisabledError(ServeError):
    status, code = 404, "not_found"


class JobFailed(LoraOpsError):
    """A job that cannot finish: `code`, `message` and `param` become the job's `error`."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param}


class LeaseLostError(LoraOpsError):
    """This worker no longer holds the job (cancelled, or its lease expired and another took it)."""


class TooManyTokensError(BadRequestError):
    """A job that would train on more tokens than the tenant's per-job quota."""

    code = "quota_exceeded"
