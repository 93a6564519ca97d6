"""Errors of the serving engine and API. Each maps to one HTTP status (see api.py)."""

from loraops.errors import LoraOpsError


class ServeError(LoraOpsError):
    """Base class; `status` and `code` are the HTTP status and the OpenAI error code."""

    status = 400
    code = "invalid_request_error"
    kind = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


class BadRequestError(ServeError):
    """A malformed or out-of-range request field."""

    code = "invalid_value"


class ContextLengthError(BadRequestError):
    code = "context_length_exceeded"


class UnsupportedAdapterError(ServeError):
    """An adapter the slot pool cannot hold (DoRA, modules_to_save, rank over --max-rank)."""

    code = "unsupported_adapter"


class AuthError(ServeError):
    status, code, kind = 401, "invalid_api_key", "authentication_error"


class ModelNotFoundError(ServeError):
    """Unknown model — and, on purpose, also a model that belongs to another tenant."""

    status, code, kind = 404, "model_not_found", "invalid_request_error"


class RateLimitError(ServeError):
    status, code, kind = 429, "rate_limit_exceeded", "rate_limit_error"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class OverloadedError(ServeError):
    """The engine's queue is full. 503 with Retry-After."""

    status, code, kind = 503, "server_overloaded", "server_error"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class AdapterUnavailableError(ServeError):
    """A registered adapter whose files could not be read again when it had to be (re)loaded."""

    status, code, kind = 503, "adapter_unavailable", "server_error"


class InternalError(ServeError):
    """A bug while generating: the request fails with 500 and the server keeps serving."""

    status, code, kind = 500, "internal_error", "server_error"


class NonFiniteOutputError(ServeError):
    """The forward produced NaN or infinity in this request's rows (an adapter with non-finite or
    huge weights, typically): that request fails with 500; the rest of its batch is unaffected."""

    status, code, kind = 500, "non_finite_output", "server_error"


class PayloadTooLargeError(ServeError):
    """A request body over the server's limit (--max-body-bytes)."""

    status, code = 413, "request_too_large"


class ClientClosedError(ServeError):
    """The client went away before its request was answered (nginx's 499; never sent, only counted)."""

    status, code = 499, "client_closed_request"
