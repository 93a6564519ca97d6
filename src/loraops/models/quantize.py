"""Int8 CPU inference: int8 weights per output channel, activations quantized per token (W8A8 dynamic).

We measured the CPU options torch 2.13 offers (bench/quantize.py, docs/benchmarks.md): fbgemm's
dynamic int8 linear beat weight-only `_weight_int8pack_mm` with fp32 activations by 4-14x and
fp32 by 2-7x on the shapes of Gemma 3 270M, so that is the kernel. LoRA stays in fp32 on top
(LoRALinear wraps an Int8Linear like any Linear). Backward through the frozen int8 base uses the
weights dequantized on the fly, which is what QLoRA-style training needs: only the input grad
(`loraops train --quantize int8`, docs/training.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loraops.lora.inject import set_submodule


def quantize_activation_reference(x: torch.Tensor) -> torch.Tensor:
    """What Int8Linear does to x before the int8 matmul: every row (token) divided by its absmax,
    then fbgemm's per-tensor quantization (asymmetric, 7-bit range because of reduce_range), then
    scaled back. Returns the dequantized activation, so reference = this @ Wdqᵀ. x: [..., in]."""
    m = _row_absmax(x)
    u = x / m
    lo, hi = min(u.min().item(), 0.0), max(u.max().item(), 0.0)
    scale = (hi - lo) / 127 or 1.0
    zero = min(max(round(-lo / scale), 0), 127)
    inverse = torch.tensor(1.0 / scale, dtype=torch.float32)   # fbgemm multiplies by the fp32 inverse
    return (torch.clamp(torch.round(u * inverse) + zero, 0, 127) - zero) * scale * m


def _row_absmax(x: torch.Tensor) -> torch.Tensor:
    """[..., in] -> [..., 1]: each token's largest magnitude (never 0)."""
    return x.abs().amax(-1, keepdim=True).clamp(min=1e-12)


def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """Plain-torch twin of Int8Linear.forward. x: [..., in] -> [..., out]."""
    y = quantize_activation_reference(x.float()) @ (q.float() * scale[:, None]).T
    return y + bias if bias is not None else y


class _Int8Matmul(torch.autograd.Function):
    """Forward with the fbgemm kernel (or, weight_only, fp32 x @ dequantized Wᵀ); backward gives the
    input grad from dequantized weights. A Function rather than F.linear so that no layer's fp32
    weight is kept for backward: it is dequantized again there, one layer at a time."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        x = x.float()
        if layer.weight_only:
            return F.linear(x, layer.dequantize_weight(), layer.bias)  # [..., in] -> [..., out]
        # fbgemm quantizes its whole input with one scale. Gemma's first token carries activations
        # ~100x larger than the rest (an attention sink), and pad rows differ again, so one scale for
        # the batch rounds every other token to a few levels (garbage output). Dividing each row by
        # its absmax first and multiplying back after gives per-token quantization for two cheap ops.
        m = _row_absmax(x)
        y = torch.ops.quantized.linear_dynamic((x / m).contiguous(), layer._packed, True) * m
        return y + layer.bias if layer.bias is not None else y

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out @ ctx.layer.dequantize_weight(), None  # [..., out] @ [out, in]


class Int8Linear(nn.Module):
    """A frozen nn.Linear with int8 weights (symmetric, per output channel), held only in fbgemm's
    packed form: one byte per weight, no second copy. weight_only: fp32 activations times the weight
    dequantized on the fly instead of fbgemm's W8A8 kernel, for training: Gemma's activations lose
    too much to the kernel's 7-bit per-tensor rounding (docs/training.md)."""

    def __init__(self, linear: nn.Linear, weight_only: bool = False):
        super().__init__()
        self.weight_only = weight_only
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0,
                                        torch.qint8)
        self.bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self._packed = torch.ops.quantized.linear_prepack(qw, None)   # bias added after the row rescale

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (q: int8 [out, in], scale: fp32 [out]) with W ≈ q · scale."""
        qw = torch.ops.quantized.linear_unpack(self._packed)[0]
        return qw.int_repr(), qw.q_per_channel_scales().float()

    def dequantize_weight(self) -> torch.Tensor:
        """[out, in] fp32."""
        q, scale = self.int8_weight()
        return q.float() * scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Int8Matmul.apply(x, self).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8{' weight-only' if self.weight_only else ''}"


def quantize_int8_(model: nn.Module, include_lm_head: bool = True, weight_only: bool = False) -> list[str]:
    """Replace every nn.Linear (also inside LoRALinear wrappers) by an Int8Linear, in place.
    Returns the quantized module paths. The LM head is usually the largest matrix (Gemma: 262k × 640)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    done = []
    for path, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or (module is head and not include_lm_head):
            continue
        set_submodule(model, path, Int8Linear(module, weight_only))
        done.append(path)
    if head is not None and include_lm_head and hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False  # the head is its own int8 copy now
    return done


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())

