"""The base model's fp32 linear layers, shaped for decode steps on CPU.

A decode step multiplies a few tokens (one per running sequence) by every weight matrix. torch's
F.linear(x, W) = x @ Wᵀ hands that to MKL as an [T, in] x [in, out] sgemm, which on our AVX2
machines runs these skinny shapes 1.5-2.6x slower than the same product asked for the other way
round, (W @ xᵀ)ᵀ — and the 262k-row LM head a further ~2x slower unless it is done in row blocks
whose weights stay in cache (measurements: docs/benchmarks.md, Serving). And MKL's time for
W @ xᵀ steps up with the token count: 5-15 tokens cost as much as 16 or up to 1.6x more (10-12),
17-31 as much as 32 or more — so above 4 tokens x is padded with zero rows to a multiple of 16.
Prefill-sized steps (many tokens) are compute-bound and F.linear is as fast there, so the swap
only applies up to `MAX_TOKENS`.

`linear_reference` is plain F.linear; tests compare `rows_first_linear` against it.
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


def install_decode_linears(model: nn.Module) -> int:
    """Swap every fp32 nn.Linear of `model` (the LM head included) for a DecodeLinear, in place.
    Int8Linear and other layers are left alone. Returns how many were swapped."""
    swapped = 0
    for path, module in list(model.named_modules()):
        if type(module) is nn.Linear and module.weight.dtype == torch.float32:
            set_submodule(model, path, DecodeLinear(module))
            swapped += 1
    return swapped
