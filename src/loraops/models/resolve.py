"""BASE → a local HF model directory + its fingerprint.

BASE is a known name (`gemma-3-270m`, the default), an HF model directory (safetensors weights),
a diffusers pipeline directory (model_index.json, unet/, text_encoder/, ...; models/diffusion.py),
or a `.gguf` file (converted once into LORAOPS_HOME/models/gguf-<digest>/).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from loraops.errors import ModelNotFoundError, UnsafeFileError
from loraops.lora.peft_format import PICKLE_SUFFIXES
from loraops.models.fingerprint import fingerprint_dir, weight_files
from loraops.models.gguf import assemble_default_gguf, convert_gguf
from loraops.paths import models_dir

DEFAULT_BASE = "gemma-3-270m"
KNOWN_BASES = (DEFAULT_BASE,)


@dataclass(frozen=True)
class BaseInfo:
    name: str
    path: Path
    fingerprint: str


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists() and any(model_dir.glob("*.safetensors"))


def _check_hf_dir(d: Path) -> None:
    pipeline = (d / "model_index.json").exists()
    if not pipeline and not (d / "config.json").exists():
        raise ModelNotFoundError(f"{d} is a directory but not an HF model directory (no config.json) "
                                 "nor a diffusers pipeline (no model_index.json)")
    if not weight_files(d):
        where = d / "unet" if pipeline else d
        pickles = [p.name for p in where.iterdir() if p.suffix in PICKLE_SUFFIXES] if where.is_dir() else []
        if pickles:
            raise UnsafeFileError(f"{where}/{pickles[0]} is a pickle file; loraops loads safetensors weights only")
        raise ModelNotFoundError(f"{where} has no *.safetensors weights")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def resolve_base(spec: str, progress: bool = False) -> BaseInfo:
    """Find or build the HF directory for `spec`. Converting happens once; later calls take seconds."""
    console = Console(stderr=True, quiet=not progress)
    if spec in KNOWN_BASES:
        target = models_dir() / spec
        if not _is_complete(target):
            gguf = assemble_default_gguf(models_dir() / "gguf")
            convert_gguf(gguf, target, console)
        return BaseInfo(spec, target, fingerprint_dir(target))
    path = Path(spec).expanduser().absolute()   # absolute: it must name the same base from any working directory
    if path.is_dir():
        _check_hf_dir(path)
        return BaseInfo(path.name, path, fingerprint_dir(path))
    if path.is_file() and path.suffix == ".gguf":
        target = models_dir() / f"gguf-{_file_digest(path)[:16]}"
        if not _is_complete(target):
            convert_gguf(path, target, console)
        return BaseInfo(path.stem, target, fingerprint_dir(target))
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(f"{spec} is a pickle file; loraops loads safetensors or .gguf only")
    raise ModelNotFoundError(f"base {spec!r} is not a known name ({', '.join(KNOWN_BASES)}), "
                             f"an HF model directory, or a .gguf file")
