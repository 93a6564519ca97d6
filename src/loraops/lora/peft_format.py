"""Read and write adapters in PEFT's on-disk format, exactly.

    DIR/adapter_config.json          PEFT's LoraConfig fields
    DIR/adapter_model.safetensors    keys `base_model.model.<module path>.lora_A.weight`, ...
    DIR/loraops.json                 our metadata (base fingerprint, lineage, metrics); optional

The metadata is also copied into the safetensors header (`__metadata__["loraops"]`).
Writes are atomic: a directory is built beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from loraops.atomic import atomic_dir
from loraops.errors import AdapterFormatError, UnsafeFileError
from loraops.lora.adapter import Adapter
from loraops.lora.config import LoRAConfig, finite_number
from loraops.lora.conv import from_peft_shapes, peft_shapes
from loraops.lora.inject import pattern_key

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "loraops.json"
PREFIX = "base_model.model."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def to_peft_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    sd = {}
    for path, m in adapter.modules.items():
        A, B, magnitude = peft_shapes(m)
        sd[f"{PREFIX}{path}.lora_A.weight"] = A.contiguous()
        sd[f"{PREFIX}{path}.lora_B.weight"] = B.contiguous()
        if magnitude is not None:
            sd[f"{PREFIX}{path}.lora_magnitude_vector"] = magnitude.contiguous()
    for key, t in adapter.saved_modules.items():
        sd[f"{PREFIX}{key}"] = t.contiguous()
    return sd


def from_peft_state_dict(sd: dict[str, torch.Tensor], config: LoRAConfig) -> tuple[dict, dict]:
    """-> (modules, saved_modules). Unknown keys are an error, never silently dropped."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    saved = {}
    suffixes = {".lora_A.weight": "A", ".lora_B.weight": "B",
                ".lora_magnitude_vector": "magnitude", ".lora_magnitude_vector.weight": "magnitude"}
    for key, tensor in sd.items():
        if not key.startswith(PREFIX):
            raise AdapterFormatError(f"unexpected tensor {key!r} (PEFT keys start with {PREFIX!r})")
        name = key[len(PREFIX):]
        for suffix, part in suffixes.items():
            if name.endswith(suffix):
                parts.setdefault(name[: -len(suffix)], {})[part] = tensor
                break
        else:
            if ".lora_" in name:
                raise AdapterFormatError(f"unsupported LoRA tensor {key!r}")
            if not any(name.startswith(m + ".") for m in config.modules_to_save or []):
                raise AdapterFormatError(f"unexpected tensor {key!r}: not LoRA and not in modules_to_save")
            saved[name] = tensor
    modules = {}
    for path, p in parts.items():
        if "A" not in p or "B" not in p:
            raise AdapterFormatError(f"{path}: has {'lora_A' if 'A' in p else 'lora_B'} but not "
                                     f"{'lora_B' if 'A' in p else 'lora_A'}")
        m = from_peft_shapes(path, p["A"], p["B"], p.get("magnitude"))
        akey = pattern_key(config.alpha_pattern, path)
        m.scale = config.scale(m.r, config.alpha_pattern[akey] if akey else config.alpha)
        modules[path] = m
    if not modules:
        raise AdapterFormatError("adapter has no LoRA weights")
    return modules, saved


def save_adapter(adapter: Adapter, out_dir: str | os.PathLike) -> Path:
    """Write `adapter` to `out_dir` atomically (replacing an existing adapter there)."""
    with atomic_dir(out_dir) as tmp:
        header = {"format": "pt"}
        if adapter.meta:
            header["loraops"] = json.dumps(adapter.meta, sort_keys=True)
        save_file(to_peft_state_dict(adapter), tmp / WEIGHTS_FILE, metadata=header)
        (tmp / CONFIG_FILE).write_text(json.dumps(adapter.config.to_peft(), indent=2, sort_keys=True) + "\n")
        if adapter.meta:
            (tmp / META_FILE).write_text(json.dumps(adapter.meta, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def read_adapter(adapter_dir: str | os.PathLike) -> Adapter:
    """Load an adapter directory written by PEFT or loraops. Refuses pickle weights, tensors that are
    not floating point, empty or non-finite (NaN/inf) tensors, and metadata of the wrong shape."""
    d = Path(adapter_dir)
    if not d.exists():
        raise AdapterFormatError(f"adapter directory {str(d)!r} does not exist")
    if not d.is_dir():
        raise AdapterFormatError(f"{str(d)!r} is not a directory (an adapter is a directory with "
                                 f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    weights = d / WEIGHTS_FILE
    if not weights.exists():
        pickles = [p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UnsafeFileError(f"{d}/{pickles[0]} is a pickle file; loraops loads safetensors only "
                                  f"(convert it with PEFT: model.save_pretrained(dir, safe_serialization=True))")
        raise AdapterFormatError(f"{d} has no {WEIGHTS_FILE}")
    if not (d / CONFIG_FILE).exists():
        raise AdapterFormatError(f"{d} has no {CONFIG_FILE}")
    config = LoRAConfig.from_peft(read_json_object(d / CONFIG_FILE))
    try:
        sd = load_file(weights)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise AdapterFormatError(f"{weights} is not a valid safetensors file: {e}") from e
    for key, tensor in sd.items():
        check_tensor(key, tensor)
    modules, saved = from_peft_state_dict(sd, config)
    meta = check_meta(read_json_object(d / META_FILE)) if (d / META_FILE).exists() else {}
    return Adapter(config, modules, saved, meta)


def read_json_object(path: Path) -> dict:
    """A JSON file holding one object, as strict JSON (no NaN/Infinity). AdapterFormatError otherwise,
    including for a path that is a directory or nests too deeply to parse."""
    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), parse_constant=no_constants)
    except OSError as e:
        raise AdapterFormatError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:   # JSONDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise AdapterFormatError(f"{path} is not valid JSON: {reason}") from e
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return raw


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(key: str, tensor: torch.Tensor) -> None:
    """Refuse what would be silently cast or poison every forward it joins: integer, bool, complex
    and float8 tensors, empty ones, and NaN/inf values."""
    if tensor.dtype not in FLOAT_DTYPES:
        raise AdapterFormatError(f"tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                                 f"adapter weights must be float16, bfloat16, float32 or float64")
    if tensor.numel() == 0:
        raise AdapterFormatError(f"tensor {key!r} is empty (shape {tuple(tensor.shape)}): rank 0 or a zero "
                                 f"dimension")
    if not bool(torch.isfinite(tensor).all()):
        raise AdapterFormatError(f"tensor {key!r} holds non-finite values (NaN or inf)")


def check_meta(meta: dict, where: str = META_FILE) -> dict:
    """Type-check the loraops.json fields that loraops reads, before anything relies on them."""
    for key in ("base_fingerprint", "base_name", "base_source", "dataset_digest", "forced_base"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise AdapterFormatError(f"{where}: {key!r} must be a string")
    for key in ("hyperparameters", "metrics", "composition"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise AdapterFormatError(f"{where}: {key!r} must be a JSON object")
    parents = meta.get("parents")
    if parents is None:
        return meta
    if not isinstance(parents, list):
        raise AdapterFormatError(f"{where}: 'parents' must be a list of objects")
    for i, p in enumerate(parents):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
            raise AdapterFormatError(f"{where}: parents[{i}] must be an object with a 'name'")
        version, weight = p.get("version"), p.get("weight", 1.0)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise AdapterFormatError(f"{where}: parents[{i}].version must be a positive integer or null, "
                                     f"got {json.dumps(version)[:40]}")
        if not finite_number(weight):
            raise AdapterFormatError(f"{where}: parents[{i}].weight must be a finite number")
    return meta
