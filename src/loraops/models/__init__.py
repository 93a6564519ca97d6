"""Base models: resolve a name / HF dir / .gguf, fingerprint it, load it, bind adapters to it."""

from loraops.models.fingerprint import fingerprint_dir, fingerprint_module
from loraops.models.load import (EncoderBase, LoadedBase, check_base, is_encoder, load_adapter_onto, load_base,
                                 load_encoder_base)
from loraops.models.resolve import DEFAULT_BASE, BaseInfo, resolve_base

__all__ = ["BaseInfo", "DEFAULT_BASE", "EncoderBase", "LoadedBase", "check_base", "fingerprint_dir",
           "fingerprint_module", "is_encoder", "load_adapter_onto", "load_base", "load_encoder_base", "resolve_base"]
