"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

OUT/checkpoints/step-00000100/ holds lora.safetensors (the trainable tensors) and state.pt
(optimizer, schedule position, RNG states, data position, metrics so far), loaded with
`weights_only=True`. A directory appears only complete (temp dir + rename); the newest K are kept.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from loraops.atomic import atomic_dir

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


def _tuples(x):
    # random.setstate wants the nested tuples back that torch.save may have turned into lists
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(out: str | Path, step: int, params: dict[str, torch.Tensor], state: dict, keep: int) -> Path:
    """Write step `step` atomically, then drop all but the newest `keep` checkpoints."""
    target = checkpoint_dir(out) / f"step-{step:08d}"
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().contiguous() for k, v in params.items()}, tmp / "lora.safetensors")
        torch.save(state, tmp / "state.pt")
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs of an interrupted write are not listed)."""
    root = checkpoint_dir(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(path / "lora.safetensors"), torch.load(path / "state.pt", weights_only=True)
