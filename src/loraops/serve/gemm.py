"""The base model's fp32 linear layers in the engine, shaped for CPU decode steps.

A decode step multiplies a few tokens (one per running sequence) by every weight matrix.

- Body linears (`PackedLinear`): oneDNN's fp32 GEMM on a weight it has reordered once into its own
  blocked layout (`torch.ops.mkldnn`, the kernels inductor's CPU backend calls for frozen linears).
  On our AVX-512 machines it ran a decode step's 16-token linears 1.3-1.6x faster than MKL's sgemm
  in either operand order, 3x faster at odd token counts (MKL's time steps up with the count:
  10-12 tokens cost up to 1.6x as much as 16), and prefill sizes ~1.2x faster (bench/step.py,
  docs/benchmarks.md). The dense weight is not kept: the packed copy replaces it.
- The LM head (`DecodeLinear`): its weight is shared (tied to the embedding in most models, and
  read by the greedy screen, head.py), so it keeps that dense weight and computes rows-first,
  (W @ xᵀ)ᵀ, in row blocks whose weights stay in cache — MKL ran F.linear's x @ Wᵀ for these skinny
  shapes 1.5-2.6x slower, the 262k-row head a further ~2x slower unblocked — with x padded with
  zero rows to a multiple of 16 above 4 tokens (the staircase above). Prefill-sized steps use
  F.linear, which is as fast there. Without oneDNN every linear takes this path.

`linear_reference` is plain F.linear; tests compare both paths against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loraops.lora.inject import set_submodule

MAX_TOKENS = 64          # steps with more tokens than this use F.linear
HEAD_BLOCK = 1024        # output rows per block for very wide layers (the LM head)
WIDE = 16384             # layers with more outputs than this are done in blocks
PAD_TO, PAD_ABOVE = 16, 4   # steps of 5-15 tokens cost more than 16 (17-31 more than 32): pad with zeros


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def rows_first_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      block: int | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) computed as W @ xᵀ, in blocks of `block` output rows when given.
    x: [..., in], weight: [out, in], bias: [out] -> [..., out] (contiguous)."""
    x2 = x.reshape(-1, x.shape[-1])                          # [T, in]
    tokens = x2.shape[0]
    if tokens > PAD_ABOVE and tokens % PAD_TO:               # zero rows: MKL is faster at multiples of 16
        x2 = torch.cat([x2, x2.new_zeros(PAD_TO - tokens % PAD_TO, x2.shape[1])])
    if block is None:
        out = weight @ x2.T                                  # [out, T']
    else:
        out = x2.new_empty(weight.shape[0], x2.shape[0])
        for lo in range(0, weight.shape[0], block):          # each block's rows stay in cache
            torch.mm(weight[lo:lo + block], x2.T, out=out[lo:lo + block])
    y = out[:, :tokens].T.contiguous()                       # [T, out]
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], weight.shape[0])


class DecodeLinear(nn.Module):
    """Drop-in for an fp32 nn.Linear inside the engine; shares its weight and bias (no copy)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block = HEAD_BLOCK if self.out_features > WIDE else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // self.in_features > MAX_TOKENS:
            return F.linear(x, self.weight, self.bias)
        return rows_first_linear(x, self.weight, self.bias, self.block)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """An fp32 nn.Linear computed by oneDNN on its weight reordered once (module docstring). It
    holds the packed weight only; `dense_weight()` gives the plain [out, in] back (tests)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())   # opaque [out, in]
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def dense_weight(self) -> torch.Tensor:
        return self.packed.to_dense()


def install_decode_linears(model: nn.Module) -> int:
    """Swap every fp32 nn.Linear of `model` in place: the body's for PackedLinear (DecodeLinear
    without oneDNN), the LM head for DecodeLinear. Int8Linear and other layers are left alone.
    Returns how many were swapped."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    packed = onednn_available()
    swapped = 0
    for path, module in list(model.named_modules()):
        if type(module) is nn.Linear and module.weight.dtype == torch.float32:
            layer = PackedLinear(module) if packed and module is not head else DecodeLinear(module)
            set_submodule(model, path, layer)
            swapped += 1
    return swapped
