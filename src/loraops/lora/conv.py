"""LoRAConv: a frozen nn.Conv1d/2d/3d plus a trainable low-rank update, in PEFT's layout.

    A: a conv with the base's kernel, stride and padding from `in` into r channels, [r, in, *k]
    B: a 1×1 conv from r back to `out` channels,                                     [out, r, *1]
    forward(x) = base(x) + scale · B(A(drop(x)))

Since B is 1×1, B(A(x)) is the conv of x with ΔW = (B.flatten(1) @ A.flatten(1)).view(out, in, *k):
a conv update is a rank-r matrix over the flattened kernel [out, in·∏k]. That flattened form is
how `ModuleLoRA`, merge and compose see a conv (`kernel_size` says how to fold it back).
DoRA (PEFT's `DoraConv2dLayer`): the magnitude rescales each output channel's filter; its norm is
over all of a filter's [in, *k] entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loraops.errors import AdapterFormatError, TargetNotFoundError
from loraops.lora import merge
from loraops.lora.adapter import ModuleLoRA
from loraops.lora.layer import init_lora_, load_lora_weights_, lora_weights, merge_into_base_, unmerge_from_base_

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))


def check_conv(path: str, conv: nn.Module) -> None:
    """PEFT's conv LoRA is exact only for plain convs: its A ignores dilation, and with groups > 1
    neither PEFT nor the formula above can merge it. Refuse those instead of training something
    other tools read differently."""
    if conv.groups != 1 or any(d != 1 for d in conv.dilation) or conv.padding_mode != "zeros":
        raise TargetNotFoundError(
            f"target module {path!r} is a {type(conv).__name__} with groups={conv.groups}, "
            f"dilation={conv.dilation}, padding_mode={conv.padding_mode!r}; LoRA supports convs with "
            "groups=1, dilation=1 and zero padding only")


def peft_shapes(m: ModuleLoRA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ModuleLoRA -> (lora_A, lora_B, lora_magnitude_vector) as PEFT stores them: a conv's A
    [r, in, *k], B [out, r, *1] and magnitude [1, out, *1]; a linear's unchanged."""
    if not m.kernel_size:
        return m.A, m.B, m.magnitude
    ones = (1,) * len(m.kernel_size)
    A = m.A.reshape(m.r, -1, *m.kernel_size)
    B = m.B.reshape(m.out_features, m.r, *ones)
    mag = m.magnitude.reshape(1, -1, *ones) if m.magnitude is not None else None
    return A, B, mag


def from_peft_shapes(path: str, A: torch.Tensor, B: torch.Tensor, magnitude: torch.Tensor | None,
                     scale: float = 1.0) -> ModuleLoRA:
    """Inverse of peft_shapes, checking that the tensors are a LoRA pair of one layer."""
    if A.ndim != B.ndim or A.ndim not in (2, 3, 4, 5) or A.shape[0] != B.shape[1]:
        raise AdapterFormatError(f"{path}: rank mismatch, lora_A {tuple(A.shape)} vs lora_B {tuple(B.shape)}")
    kernel = tuple(A.shape[2:])
    if any(s != 1 for s in B.shape[2:]):
        raise AdapterFormatError(f"{path}: conv lora_B must be 1x1, got {tuple(B.shape)}")
    if magnitude is not None:
        magnitude = magnitude.reshape(-1)
    return ModuleLoRA(A.flatten(1), B.flatten(1), scale, magnitude, kernel)


class LoRAConv(nn.Module):
    def __init__(self, base: nn.Module, r: int, scale: float, dropout: float = 0.0,
                 use_dora: bool = False, init: str = "default"):
        super().__init__()
        self.base = base.requires_grad_(False)
        w = base.weight
        self.conv = _CONV_FN[w.ndim - 2]
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(r, *w.shape[1:], device=w.device))               # [r, in, *k]
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], r, *(1,) * (w.ndim - 2), device=w.device))  # [out, r, *1]
        self.magnitude = nn.Parameter(torch.empty(w.shape[0], device=w.device)) if use_dora else None
        self.merged = False
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "default") -> None:
        init_lora_(self, init)

    def base_weight(self) -> torch.Tensor:
        """[out, in·∏k]"""
        return self.base.weight.flatten(1)

    def delta(self) -> torch.Tensor:
        """ΔW flattened: [out, in·∏k], fp32."""
        return merge.lora_delta(self.lora_A.flatten(1), self.lora_B.flatten(1), self.scale)

    def weights(self) -> ModuleLoRA:
        return lora_weights(self, tuple(self.base.kernel_size))

    def load_weights(self, w: ModuleLoRA) -> None:
        load_lora_weights_(self, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, in, *spatial] -> [batch, out, *spatial']"""
        out = self.base(x)
        if self.merged:
            return out
        base = self.base
        h = self.dropout(x)
        lora = self.conv(self.conv(h.to(self.lora_A.dtype), self.lora_A, None, base.stride, base.padding),
                         self.lora_B)
        if self.magnitude is None:
            return out + (lora * self.scale).to(out.dtype)
        view = (1, -1) + (1,) * (out.ndim - 2)  # per output channel
        norm = merge.row_norm(self.base_weight().float(), self.delta().detach()).detach()
        mag_scale = (self.magnitude / norm).view(view)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base_out = out.float() - (base.bias.float().view(view) if base.bias is not None else 0)
        else:
            base_out = self.conv(h.float(), base.weight.float(), None, base.stride, base.padding)
        dora = (mag_scale - 1) * base_out + mag_scale * lora * self.scale
        return out + dora.to(out.dtype)

    def merge_(self) -> None:
        merge_into_base_(self, lambda w: self.base.weight.copy_(w.view_as(self.base.weight)))

    def unmerge_(self) -> None:
        unmerge_from_base_(self, lambda w: self.base.weight.copy_(w.view_as(self.base.weight)))

    def extra_repr(self) -> str:
        r = self.lora_A.shape[0]
        return (f"in={self.lora_A.shape[1]}, out={self.lora_B.shape[0]}, kernel={tuple(self.base.kernel_size)}, "
                f"r={r}, scale={self.scale:g}, dora={self.magnitude is not None}")
