"""LoRALinear: a frozen nn.Linear (or GPT-2 Conv1D) plus a trainable low-rank update.

forward(x) = base(x) + scale · (drop(x) @ Aᵀ) @ Bᵀ          (plain LoRA)
DoRA (Liu et al. 2024) rescales each output row of W + scale·BA to a learned magnitude m.
The LoRA parameters are kept in fp32 whatever the base dtype, like PEFT's autocast_adapter_dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from loraops.lora import merge
from loraops.lora.adapter import ModuleLoRA


def is_adaptable(module: nn.Module) -> bool:
    """Linear, GPT-2 Conv1D, or a quantized linear that can give its weight back (`dequantize_weight`)."""
    return isinstance(module, (nn.Linear, Conv1D)) or hasattr(module, "dequantize_weight")


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The base weight as [out, in] (GPT-2's Conv1D stores it transposed, [in, out]; an nn.ConvNd
    kernel [out, in, *k] is flattened to [out, in·∏k], see conv.py)."""
    if hasattr(module, "dequantize_weight"):
        return module.dequantize_weight()
    if isinstance(module, Conv1D):
        return module.weight.T
    return module.weight.flatten(1)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, scale: float, dropout: float = 0.0,
                 use_dora: bool = False, init: str = "default"):
        super().__init__()
        self.base = base.requires_grad_(False)
        out_features, in_features = weight_out_in(base).shape
        device = weight_out_in(base).device
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device))
        self.magnitude = nn.Parameter(torch.empty(out_features, device=device)) if use_dora else None
        self.merged = False
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "default") -> None:
        init_lora_(self, init)

    def base_weight(self) -> torch.Tensor:
        """[out, in]"""
        return weight_out_in(self.base)

    def delta(self) -> torch.Tensor:
        """ΔW: [out, in], fp32."""
        return merge.lora_delta(self.lora_A, self.lora_B, self.scale)

    def weights(self) -> ModuleLoRA:
        return lora_weights(self)

    def load_weights(self, w: ModuleLoRA) -> None:
        load_lora_weights_(self, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]"""
        out = self.base(x)
        if self.merged:
            return out
        h = self.dropout(x)
        lora = F.linear(F.linear(h.to(self.lora_A.dtype), self.lora_A), self.lora_B)  # [..., out]
        if self.magnitude is None:
            return out + (lora * self.scale).to(out.dtype)
        # DoRA, as PEFT computes it: the norm is detached (paper §4.3), the base term is rescaled.
        weight = self.base_weight().float()
        norm = merge.row_norm(weight, self.delta().detach()).detach()
        mag_scale = self.magnitude / norm  # [out]
        if isinstance(self.dropout, nn.Identity) or not self.training:
            bias = getattr(self.base, "bias", None)
            base_out = out.float() - (bias.float() if bias is not None else 0)
        else:
            base_out = F.linear(h.float(), weight)
        dora = (mag_scale - 1) * base_out + mag_scale * lora * self.scale
        return out + dora.to(out.dtype)

    def merge_(self) -> None:
        """Fold ΔW into the base weight in place (zero inference overhead)."""
        if not hasattr(self.base, "weight") or self.base.weight.dtype == torch.int8:
            raise TypeError("cannot merge into a quantized base; merge on the fp32 base instead")
        merge_into_base_(self, self._write_base)

    def unmerge_(self) -> None:
        unmerge_from_base_(self, self._write_base)

    def _write_base(self, w: torch.Tensor) -> None:
        """w: [out, in]"""
        self.base.weight.copy_(w.T if isinstance(self.base, Conv1D) else w)

    def extra_repr(self) -> str:
        r, i = self.lora_A.shape
        return f"in={i}, out={self.lora_B.shape[0]}, r={r}, scale={self.scale:g}, dora={self.magnitude is not None}"


# Shared by LoRALinear and LoRAConv (conv.py), which differ only in the shape of their weights:
# `layer` has lora_A, lora_B, magnitude, scale, merged, base, base_weight() -> [out, in] and
# delta() -> [out, in]; a conv's A and B are kernels and are flattened here.

def init_lora_(layer: nn.Module, init: str = "default") -> None:
    """PEFT's init: A kaiming-uniform(a=√5) (over the fan-in: in, or in·∏kernel) or N(0, 1/r); B zero
    so the adapter starts as a no-op. "random" also draws B (a non-trivial adapter, for tests)."""
    with torch.no_grad():
        if init == "gaussian":
            nn.init.normal_(layer.lora_A, std=1 / layer.lora_A.shape[0])
        else:
            nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))
        if init == "random":
            nn.init.normal_(layer.lora_B, std=0.02)
        else:
            layer.lora_B.zero_()
        if layer.magnitude is not None:
            layer.magnitude.copy_(merge.row_norm(layer.base_weight(), layer.delta()))


def lora_weights(layer: nn.Module, kernel_size: tuple[int, ...] = ()) -> ModuleLoRA:
    mag = layer.magnitude.detach().clone() if layer.magnitude is not None else None
    return ModuleLoRA(layer.lora_A.detach().flatten(1).clone(), layer.lora_B.detach().flatten(1).clone(),
                      layer.scale, mag, kernel_size)


def load_lora_weights_(layer: nn.Module, w: ModuleLoRA) -> None:
    with torch.no_grad():
        layer.lora_A.copy_(w.A.view_as(layer.lora_A))
        layer.lora_B.copy_(w.B.view_as(layer.lora_B))
        layer.scale = w.scale
        if layer.magnitude is not None:
            layer.magnitude.copy_(w.magnitude)


@torch.no_grad()
def merge_into_base_(layer: nn.Module, write) -> None:
    """Fold ΔW into the base weight in place; `write(w)` stores an [out, in] weight in the base's layout."""
    if layer.merged:
        return
    layer._pre_merge = layer.base.weight.detach().clone()
    write(merge.merge_weight(layer.base_weight(), layer.weights()))
    layer.merged = True


@torch.no_grad()
def unmerge_from_base_(layer: nn.Module, write) -> None:
    if not layer.merged:
        return
    w = layer.weights()
    if w.magnitude is None:
        write(merge.unmerge_weight(layer.base_weight(), w))
    else:  # DoRA is not invertible from W' alone (the row norms are lost); restore the copy.
        layer.base.weight.copy_(layer._pre_merge)
    del layer._pre_merge
    layer.merged = False
