"""Adapter: the in-memory form of a LoRA adapter, independent of any model instance.

Everything that moves adapters around (PEFT files, merge, compose, the registry, the serving slot
pool) speaks this form. Module paths are the base model's own (`model.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraops.lora.config import LoRAConfig


@dataclass
class ModuleLoRA:
    """One adapted module: ΔW = scale · B @ A, with the weight oriented [out, in].

    A: [r, in], B: [out, r], magnitude: [out] (DoRA only). A conv is flattened (lora/conv.py):
    `in` = in_channels · ∏kernel_size, and `kernel_size` (empty for a linear) folds it back.
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    magnitude: torch.Tensor | None = None
    kernel_size: tuple[int, ...] = ()

    @property
    def r(self) -> int:
        return self.A.shape[0]

    @property
    def in_features(self) -> int:
        return self.A.shape[1]

    @property
    def out_features(self) -> int:
        return self.B.shape[0]


@dataclass
class Adapter:
    """config + per-module LoRA weights + full weights of `modules_to_save` + loraops metadata."""

    config: LoRAConfig
    modules: dict[str, ModuleLoRA]
    saved_modules: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. {"score.weight": ...}
    meta: dict = field(default_factory=dict)

    @property
    def base_fingerprint(self) -> str | None:
        return self.meta.get("base_fingerprint")

    def num_parameters(self) -> int:
        n = sum(m.A.numel() + m.B.numel() for m in self.modules.values())
        n += sum(m.magnitude.numel() for m in self.modules.values() if m.magnitude is not None)
        return n + sum(t.numel() for t in self.saved_modules.values())
