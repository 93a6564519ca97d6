"""Base models: resolve a name / HF dir / .gguf, fingerprint it, load it, bind adapters to it."""

from loraops.models.fingerprint import fingerprint_dir, fingerprint_module
from loraops.models.load import LoadedBase, check_base, load_adapter_onto, load_base
from loraops.models.resolve import DEFAULT_BASE, BaseInfo, resolve_base

__all__ = ["BaseInfo", "DEFAULT_BASE", "LoadedBase", "check_base", "fingerprint_dir", "fingerprint_module",
           "load_adapter_onto", "load_base", "resolve_base"]
