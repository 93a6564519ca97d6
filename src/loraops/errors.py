"""The errors loraops raises on bad input. The CLI prints them as one line and exits non-zero.

Each is raised where the cause is known; callers catch by type, never by message.
"""


class LoraOpsError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class ConfigError(LoraOpsError):
    """An invalid option value (rank <= 0, unknown init, ...)."""


class AdapterFormatError(LoraOpsError):
    """An adapter directory that is not a valid PEFT/loraops LoRA adapter."""


class AdapterMismatchError(LoraOpsError):
    """An adapter that does not fit the model it is loaded into (keys, shapes, ranks)."""


class BaseMismatchError(LoraOpsError):
    """An adapter bound to a different base model than the one it is loaded onto."""


class TargetNotFoundError(LoraOpsError):
    """Target-module selection that matches nothing, or names a module that is not adaptable."""


class UnsafeFileError(LoraOpsError):
    """A pickle-based file (.bin/.pt/.pth/.pkl) where only safetensors is accepted."""


class ModelNotFoundError(LoraOpsError):
    """A BASE that is neither a known name, an HF model directory nor a .gguf file."""


class MergeVerificationError(LoraOpsError):
    """Merged and unmerged logits differ by more than the tolerance."""


class RegistryError(LoraOpsError):
    """A registry operation that cannot be done as asked (no previous version to roll back to, ...)."""


class InvalidNameError(RegistryError):
    """An adapter, tenant or stage name outside ^[a-z0-9][a-z0-9._-]{0,63}$, or a malformed reference."""


class NotFoundError(RegistryError):
    """An adapter, version, stage or base that the registry does not hold."""


class UnregisteredBaseError(RegistryError):
    """An adapter pushed for a base the registry does not know, or with no base fingerprint at all."""


class GateFailedError(RegistryError):
    """A promotion refused by its gate (override with force and a reason)."""


class BlobCorruptError(RegistryError):
    """A stored blob that is missing or whose bytes no longer match its sha256 digest."""


class DataFormatError(LoraOpsError):
    """A malformed input line for `data curate` (bad JSON, missing fields, unknown role, ...); names the line."""

    def __init__(self, line: int, reason: str, source: str | None = None):
        super().__init__(f"{source + ' ' if source else ''}line {line}: {reason}")
        self.line = line
        self.reason = reason


class EvalDataError(LoraOpsError):
    """Evaluation data that is missing or holds nothing to evaluate (no prompt/completion examples)."""


class TrainDataError(LoraOpsError):
    """Training data that is missing or empty (no records, or none with a token to learn from)."""


class TrainingDivergedError(LoraOpsError):
    """Too many non-finite (NaN/inf) steps in a row; the last good checkpoint is kept."""
