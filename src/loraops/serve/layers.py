"""MultiLoRALinear: a base Linear plus a per-token choice of adapter from the slot pool.

forward(x) = base(x) + Σ_j weight_j · delta_j(x)   (term_j.delta, see lora_kernels.py)
over the LoRA terms of ctx = self.serve_ctx, set by the engine before each forward (see context.py):
one term for ordinary batches, more when a request composes adapters ("a:0.7+b:0.3").
"""

from __future__ import annotations

import torch
from torch import nn

from loraops.lora import LoRAConfig, select_targets
from loraops.lora.config import ALL_LINEAR
from loraops.lora.inject import set_submodule
from loraops.serve.lora_kernels import StackCache, lora_terms
from loraops.serve.slots import SlotPool, SlotTensors


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Module, slots: SlotTensors):
        super().__init__()
        self.base = base
        self.slots = slots
        self.stacks = StackCache()                           # this module's stacked slots in use
        self.serve_ctx = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)                                     # [..., out]
        ctx = self.serve_ctx
        if ctx is None:
            return y
        s = self.slots
        x2 = x.reshape(-1, x.shape[-1])                      # [T, in]
        # Terms where no token's adapter has weights on this module cost nothing.
        delta = lora_terms(x2.to(s.A.dtype), s.A, s.B, s.scale, ctx.terms, s.ranks, self.stacks)
        return y if delta is None else y + delta.view(y.shape).to(y.dtype)


def adaptable_paths(model: nn.Module) -> list[str]:
    """Every module an adapter may target: all linear layers except the output head (PEFT's "all-linear")."""
    return select_targets(model, LoRAConfig(target_modules=ALL_LINEAR))


def install(model: nn.Module, max_slots: int, max_rank: int,
            paths: list[str] | None = None) -> tuple[SlotPool, list[MultiLoRALinear]]:
    """Wrap every adaptable linear of `model` (or those at `paths`) in a MultiLoRALinear backed by
    a new SlotPool (in place)."""
    paths = adaptable_paths(model) if paths is None else paths
    pool = SlotPool.for_model(model, paths, max_slots, max_rank)
    layers = []
    for path in paths:
        layer = MultiLoRALinear(model.get_submodule(path), pool.tensors[path])
        set_submodule(model, path, layer)
        layers.append(layer)
    return pool, layers
