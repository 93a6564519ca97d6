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
