"""Any adapter file a diffusion user has -> Adapter, and Adapter -> the format another tool reads.

    loraops/PEFT directory   adapter_config.json + adapter_model.safetensors (peft_format.py)
    diffusers LoRA file      pytorch_lora_weights.safetensors, or a directory holding one (diffusers_format.py)
    kohya/A1111 LoRA file    one .safetensors with lora_unet_/lora_te_ keys (kohya.py)

Pickle files (.ckpt, .pt, .pth, .bin) are refused: loading one runs code from the file.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from loraops.errors import AdapterFormatError, ConfigError, UnsafeFileError
from loraops.lora.adapter import Adapter
from loraops.lora.diffusers_format import WEIGHTS_FILE, read_diffusers, rooted, save_diffusers
from loraops.lora.kohya import is_kohya, read_kohya, save_kohya
from loraops.lora.peft_format import CONFIG_FILE, PICKLE_SUFFIXES, read_adapter, save_adapter

FORMATS = ("peft", "diffusers", "kohya")


def detect(src: Path) -> str:
    """"peft", "diffusers" or "kohya" for an existing path; raises for anything else."""
    if src.suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(f"{src} is a pickle file; loraops loads safetensors only (re-save it as .safetensors)")
    if src.is_dir():
        if (src / CONFIG_FILE).exists():
            return "peft"
        if (src / WEIGHTS_FILE).exists():
            return "diffusers"
        return "peft"  # read_adapter says what is missing (and names a pickle file if there is one)
    if not src.is_file():
        raise AdapterFormatError(f"adapter {str(src)!r} does not exist")
    if src.suffix != ".safetensors":
        raise AdapterFormatError(f"{src}: expected an adapter directory or a .safetensors LoRA file")
    try:
        with safe_open(str(src), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as e:
        raise AdapterFormatError(f"{src} is not a valid safetensors file: {e}") from None
    return "kohya" if is_kohya(keys) else "diffusers"


def read_any(src: str | Path, module_paths: set[str]) -> Adapter:
    """Read `src` in whichever format it is, with diffusion module paths (`unet.…`, `text_encoder.…`);
    `module_paths` (the base's) resolves the names of diffusers and kohya files."""
    src = Path(src)
    kind = detect(src)
    if kind == "peft":
        return rooted(read_adapter(src))
    if kind == "diffusers":
        return read_diffusers(src / WEIGHTS_FILE if src.is_dir() else src, module_paths)
    return read_kohya(src, module_paths)


def write(adapter: Adapter, out: str | Path, to: str) -> Path:
    """`out` is a directory for "peft" and "diffusers", a .safetensors file for "kohya"."""
    if to == "peft":
        return save_adapter(adapter, out)
    if to == "diffusers":
        return save_diffusers(adapter, out)
    if to == "kohya":
        if Path(out).suffix != ".safetensors":
            raise ConfigError(f"--out {out}: a kohya LoRA is one file; name it *.safetensors")
        return save_kohya(adapter, out)
    raise ConfigError(f"unknown adapter format {to!r}; choose one of {', '.join(FORMATS)}")
