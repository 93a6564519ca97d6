"""Base fingerprint (contract): sha256 over the sorted (name, shape, dtype) list, then the bytes of
each tensor in name order. Computed once per model directory and cached beside it.

Over the module it is computed from `state_dict()` with tied duplicates dropped (the first name
wins, as in `save_pretrained`), so a model and the directory it was saved to agree.

A diffusers pipeline directory (model_index.json) is fingerprinted over the components an adapter
can change, `unet/`, `text_encoder/`, `text_encoder_2/`, with names prefixed by the component
(`unet.conv_in.weight`), the same names the components have in memory (models/diffusion.py). The
VAE, tokenizer and scheduler do not enter it: no adapter weight depends on them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from torch import nn

CACHE_FILE = ".loraops-fingerprint.json"
PIPELINE_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # what a diffusion adapter can adapt


def fingerprint_tensors(names: Iterable[str], get: Callable[[str], torch.Tensor]) -> str:
    """names: tensor names; get(name) -> tensor. Tensors are fetched one at a time (bounded memory)."""
    names = sorted(names)
    tensors_meta = []
    h = hashlib.sha256()
    for name in names:
        t = get(name)
        tensors_meta.append([name, list(t.shape), str(t.dtype).removeprefix("torch.")])
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    head = hashlib.sha256(json.dumps(tensors_meta).encode())
    head.update(h.digest())
    return "sha256:" + head.hexdigest()


def fingerprint_module(model: nn.Module) -> str:
    seen, tensors = set(), {}
    for name, t in model.state_dict().items():
        if t.untyped_storage().data_ptr() in seen and t.numel() > 0:
            continue
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return fingerprint_tensors(tensors, tensors.__getitem__)


def fingerprint_dir(model_dir: str | os.PathLike) -> str:
    """Fingerprint of the *.safetensors weights in an HF model dir, cached in CACHE_FILE (keyed by
    file names, sizes and mtimes, so a changed file invalidates it)."""
    d = Path(model_dir)
    files = weight_files(d)
    stamp = [[str(f.relative_to(d)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = d / CACHE_FILE
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("files") == stamp:
                return cached["fingerprint"]
        except (json.JSONDecodeError, KeyError):
            pass
    where = {}  # tensor name in the fingerprint -> (open file, name in the file)
    for f in files:
        handle = safe_open(str(f), framework="pt")
        prefix = "" if f.parent == d else f"{f.parent.name}."
        where.update({prefix + name: (handle, name) for name in handle.keys()})
    fp = fingerprint_tensors(where, lambda name: where[name][0].get_tensor(where[name][1]))
    try:
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"fingerprint": fp, "files": stamp}))
        os.replace(tmp, cache)
    except OSError:  # a read-only model dir: recompute next time
        pass
    return fp


def weight_files(d: Path) -> list[Path]:
    """The safetensors files a fingerprint covers: the directory's own, or a pipeline's components'
    (without variants such as `diffusion_pytorch_model.fp16.safetensors` beside the main file, which
    is the one diffusers loads)."""
    if not (d / "model_index.json").exists():
        return sorted(d.glob("*.safetensors"))
    files = []
    for component in PIPELINE_COMPONENTS:
        found = sorted((d / component).glob("*.safetensors"))
        files += [f for f in found if "." not in f.stem] or found
    return files


def short(fp: str | None) -> str:
    return (fp or "none").removeprefix("sha256:")[:12]
