"""Base fingerprint (contract): sha256 over the sorted (name, shape, dtype) list, then the bytes of
each tensor in name order. Computed once per model directory and cached beside it.

Over the module it is computed from `state_dict()` with tied duplicates dropped (the first name
wins, as in `save_pretrained`), so a model and the directory it was saved to agree.
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
    files = sorted(d.glob("*.safetensors"))
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = d / CACHE_FILE
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("files") == stamp:
                return cached["fingerprint"]
        except (json.JSONDecodeError, KeyError):
            pass
    handles = [safe_open(str(f), framework="pt") for f in files]
    where = {name: h for h in handles for name in h.keys()}
    fp = fingerprint_tensors(where, lambda name: where[name].get_tensor(name))
    try:
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"fingerprint": fp, "files": stamp}))
        os.replace(tmp, cache)
    except OSError:  # a read-only model dir: recompute next time
        pass
    return fp


def short(fp: str | None) -> str:
    return (fp or "none").removeprefix("sha256:")[:12]
