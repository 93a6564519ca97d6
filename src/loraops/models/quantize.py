"""Int8 CPU inference: int8 weights per output channel, LoRA in fp32 on top.

What `--quantize int8` builds (`quantize_for_inference_`), chosen by measurement on Gemma 3 270M
(bench/quantize.py, bench/gemm.py, docs/benchmarks.md):

- The body's linears take W8A8: fbgemm's dynamic int8 kernel, activations quantized per token.
  At a 16-token decode step it ran Gemma's shapes 4-6x faster than `_weight_int8pack_mm` (int8
  weights, bf16 activations), which was no faster than fp32 there — so int8 serving gained nothing
  under load. Per-token 8-bit activations cost accuracy where a few input channels are far larger
  than the rest, so each layer's inputs are smoothed first (SmoothQuant, alpha 0.5: channel j
  divided by s_j = max|x_j|^0.5 / max|W_:,j|^0.5 and W's column j multiplied by it, calibrated once
  on general text) and, on CPUs with VNNI (no saturation in the u8 x s8 products), quantized to
  the full 8-bit range rather than fbgemm's 7-bit default. The MLP's down projection stays
  weight-only: its input (gelu(gate) * up) is too heavy-tailed for 8 bits per token (it alone cost
  ~3x the KL divergence of all the other layers together; docs/benchmarks.md).
- Weight-only layers use torch's `_weight_int8pack_mm` at decode sizes (activations keep a
  per-element exponent); larger inputs (prefill) dequantize the weight and run the fp32 sgemm,
  which is faster there.
- The LM head (262k × 640, 60% of a token's FLOPs) uses fbgemm's W8A8 dynamic kernel, 3x faster
  than the weight-only one at batch 1. Its activations are quantized per token to 7 bits, which
  alone cost the adapted model 9x the KL divergence from fp32 of weight-only int8: in every token
  the same few hidden dimensions are far larger than the rest, and the grid is sized to them. So
  its 32 largest input channels, found once by `calibrate` on general text (the replay corpus, not
  a customer's data), stay fp32 and are multiplied exactly (LLM.int8()-style decomposition).

Training (`loraops train --quantize int8`, docs/training.md) uses weight-only layers with fp32
activations forward and backward (QLoRA-style: the input grad from the weight dequantized on the
fly). torch 2.13 marks quantized tensors (which fbgemm's prepack takes) as deprecated; when they
go, torchao's kernels are the replacement to measure, and the references here the definitions to
test them against.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from loraops.lora.inject import set_submodule

OUTLIER_CHANNELS = 32          # fp32 input channels per layer (of 640-2048 in Gemma 3 270M)
SMOOTH_ALPHA = 0.5             # SmoothQuant's migration strength for the W8A8 body
WEIGHT_ONLY_LAYERS = ("down_proj",)   # body layers whose inputs 8-bit per-token quantization hurts most


def full_range_activations() -> bool:
    """fbgemm may quantize activations to 8 bits (not its 7-bit default) without saturating its
    u8 x s8 pair sums: on CPUs with VNNI (vpdpbusd accumulates in int32)."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def smoothing(x_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = SMOOTH_ALPHA) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors s: [in] for activations with per-channel absmax
    `x_absmax` ([in], from `calibrate`) and weight [out, in]. x / s and W · s multiply to the same
    product; s balances the two ranges (alpha: how much of the activations' range moves to W)."""
    w_absmax = weight.detach().float().abs().amax(0)
    s = x_absmax.float().clamp(min=1e-5) ** alpha / w_absmax.clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(min=1e-3, max=1e3)


def quantize_activation_reference(x: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """What Int8Linear does to x (its non-outlier channels, after smoothing) before the int8 matmul:
    every row (token) divided by its absmax, then fbgemm's per-tensor quantization (asymmetric;
    `levels` 127: the 7-bit range of reduce_range, 255: full range), then scaled back. Returns the
    dequantized activation. x: [..., in]."""
    m = row_absmax(x)
    return activation_grid(x / m, levels)[0] * m


def activation_grid(u: torch.Tensor, levels: int = 127) -> tuple[torch.Tensor, float, int]:
    """fbgemm's dynamic quantization of a whole tensor u (one step for the tensor, 0 representable;
    `levels` + 1 values: 128 with reduce_range, 256 without) -> (û: u rounded to that grid,
    dequantized; the step; the zero point). The grid runs from -zero · step to (levels - zero) · step."""
    lo, hi = min(u.min().item(), 0.0), max(u.max().item(), 0.0)
    step = (hi - lo) / levels or 1.0
    zero = min(max(round(-lo / step), 0), levels)
    inverse = torch.tensor(1.0 / step, dtype=torch.float32)    # fbgemm multiplies by the fp32 inverse
    return (torch.clamp(torch.round(u * inverse) + zero, 0, levels) - zero) * step, step, zero


def row_absmax(x: torch.Tensor) -> torch.Tensor:
    """[..., in] -> [..., 1]: each token's largest magnitude (never 0)."""
    return x.abs().amax(-1, keepdim=True).clamp(min=1e-12)


def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                          outliers: torch.Tensor | None = None, w_outliers: torch.Tensor | None = None,
                          smooth: torch.Tensor | None = None, levels: int = 127) -> torch.Tensor:
    """Plain-torch twin of Int8Linear.forward (W8A8). x: [..., in], q: int8 [out, in] (zero in the
    outlier columns; W · smooth when smoothed), scale: [out], outliers: [k] input channels,
    w_outliers: fp32 [out, k], smooth: [in] SmoothQuant factors, levels: the activation grid's
    (127: 7-bit, 255: 8-bit) -> [..., out]."""
    x = x.float()
    y = 0
    if outliers is not None:
        y = x[..., outliers] @ w_outliers.T
        x = x.index_fill(-1, outliers, 0.0)
    if smooth is not None:
        x = x / smooth
    y = y + quantize_activation_reference(x, levels) @ (q.float() * scale[:, None]).T
    return y + bias if bias is not None else y


def _w8a8(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """Int8Linear's inference path. x: [T, in] fp32 -> [T, out]. Few ops, each on the whole batch:
    at batch 1 a decode step runs ~130 of these and per-op overhead is a real share of the time."""
    idx = layer.outliers
    if idx is not None:
        y_out = x.index_select(1, idx) @ layer.w_outliers_t            # [T, k] @ [k, out], fp32
    if layer.x_scale is not None:
        x = x * layer.x_scale                                          # outlier channels -> 0, smoothing
    # fbgemm quantizes its whole input with one scale. Gemma's first token carries activations
    # ~100x larger than the rest (an attention sink), and pad rows differ again, so one scale for
    # the batch rounds every other token to a few levels (garbage output). Dividing each row by its
    # absmax first and multiplying back after gives per-token quantization for two cheap ops.
    m = row_absmax(x)                                                 # [T, 1]
    y = torch.ops.quantized.linear_dynamic(x / m, layer.packed, not layer.full_range)
    y = y.mul_(m) if idx is None else torch.addcmul(y_out, y, m)
    return y if layer.bias is None else y.add_(layer.bias)


def _w8a16(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """Weight-only inference path for decode-sized inputs: torch's `_weight_int8pack_mm` (int8
    weights, activations rounded to bf16, fp32 accumulation, bf16 out). x: [T, in] -> [T, out] fp32."""
    y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), layer.q, layer.scale_bf16).float()
    return y if layer.bias is None else y.add_(layer.bias)


class _Int8Matmul(torch.autograd.Function):
    """Forward with `_w8a8` (or, weight_only, fp32 x @ dequantized Wᵀ); backward gives the input
    grad from dequantized weights. A Function rather than F.linear so that no layer's fp32 weight is
    kept for backward: it is dequantized again there, one layer at a time."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        x = x.float()
        if layer.weight_only:
            return F.linear(x, layer.dequantize_weight(), layer.bias)  # [..., in] -> [..., out]
        return _w8a8(layer, x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], layer.out_features)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out @ ctx.layer.dequantize_weight(), None  # [..., out] @ [out, in]


W8A16_MAX_TOKENS = 32   # above this, `_weight_int8pack_mm` is slower than dequantize + fp32 sgemm


class Int8Linear(nn.Module):
    """A frozen nn.Linear with int8 weights (symmetric, per output channel): one byte per weight.

    Two kinds (docs/architecture.md, measured in docs/benchmarks.md):
    - weight_only: the int8 weight `q` and its `scale`, activations kept at ≥ bf16 precision. In
      inference (no grad) with ≤ W8A16_MAX_TOKENS tokens, torch's `_weight_int8pack_mm` (bf16
      activations); otherwise, and in training, fp32 x @ the weight dequantized on the fly.
    - W8A8 (weight_only False): held only in fbgemm's packed form; activations quantized per token
      by fbgemm (7 bits, or 8 with `full_range`), except the `outliers` input channels (module
      docstring), whose weight columns are kept fp32 and multiplied exactly; with `smooth` ([in]
      SmoothQuant factors s) the int8 weight is W · s and the activations are divided by s first."""

    def __init__(self, linear: nn.Linear, weight_only: bool = False, outliers: torch.Tensor | None = None,
                 smooth: torch.Tensor | None = None, full_range: bool = False):
        super().__init__()
        self.weight_only = weight_only
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        self.outliers = outliers.long() if outliers is not None and len(outliers) and not weight_only else None
        self.smooth = smooth.float() if smooth is not None and not weight_only else None
        self.full_range = full_range and not weight_only
        self.w_outliers_t = self.keep_mask = None
        if self.outliers is not None:
            w = w.clone()                                          # its outlier columns are zeroed below
            self.w_outliers_t = w[:, self.outliers].T.contiguous()  # [k, out]
            self.keep_mask = torch.ones(self.in_features).index_fill_(0, self.outliers, 0.0)  # [in]
            w[:, self.outliers] = 0.0                              # so they do not set the int8 scales
        self.x_scale = self.keep_mask                              # what inputs are multiplied by first
        if self.smooth is not None:
            w = w * self.smooth                                    # columns j times s_j ...
            inverse = 1.0 / self.smooth                            # ... inputs divided by it
            self.x_scale = inverse if self.x_scale is None else self.x_scale * inverse
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)      # [out]
        self.bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.q = self.scale = self.scale_bf16 = self.packed = None
        if weight_only:
            self.q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)  # [out, in]
            self.scale, self.scale_bf16 = scale, scale.to(torch.bfloat16)
            return
        with warnings.catch_warnings():   # quantized tensors are deprecated in torch 2.13 (module docstring)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
            qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0,
                                            torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qw, None)   # bias added after the row rescale

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (q: int8 [out, in], zero in the outlier columns; scale: fp32 [out]): W · smooth ≈ q · scale
        outside the outlier columns."""
        if self.weight_only:
            return self.q, self.scale
        qw = torch.ops.quantized.linear_unpack(self.packed)[0]
        return qw.int_repr(), qw.q_per_channel_scales().float()

    def dequantize_weight(self) -> torch.Tensor:
        """[out, in] fp32 (W, smoothing undone), the outlier columns exact."""
        q, scale = self.int8_weight()
        w = q.float() * scale[:, None]
        if self.smooth is not None:
            w = w / self.smooth
        if self.outliers is not None:
            w[:, self.outliers] = self.w_outliers_t.T
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():                                    # training: exact fp32 activations
            return _Int8Matmul.apply(x, self).to(x.dtype)
        x2 = x.float().reshape(-1, self.in_features)                   # inference: no autograd node
        if not self.weight_only:
            y = _w8a8(self, x2)
        elif x2.shape[0] <= W8A16_MAX_TOKENS:
            y = _w8a16(self, x2)
        else:
            y = F.linear(x2, self.dequantize_weight(), self.bias)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        kind = "weight-only" if self.weight_only else "w8a8" + (" smoothed" if self.smooth is not None else "")
        k = 0 if self.outliers is None else len(self.outliers)
        bits = "" if self.weight_only else f", {8 if self.full_range else 7}-bit activations"
        return f"in={self.in_features}, out={self.out_features}, int8 {kind}, fp32 channels={k}{bits}"


def calibrate(model: nn.Module, batches: list[torch.Tensor], only: nn.Module | None = None
              ) -> dict[str, torch.Tensor]:
    """Run `model` on token batches ([1, T] input ids each) and return, for every nn.Linear (or just
    the module `only`, linear-like), the largest |activation| of each input channel: path -> [in]."""
    stats: dict[str, torch.Tensor] = {}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def hook(path):
        def record(module, inputs):
            x = inputs[0]
            a = x.detach().float().abs().reshape(-1, x.shape[-1]).amax(0)
            stats[path] = a if path not in stats else torch.maximum(stats[path], a)
            # The logits are thrown away here: the head (262k wide in Gemma, most of a forward's
            # FLOPs) computes its last position only.
            return (x[..., -1:, :],) if module is head else None
        return record
    handles = [m.register_forward_pre_hook(hook(p)) for p, m in model.named_modules()
               if m is only or (only is None and isinstance(m, nn.Linear))]
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return stats


def general_calibration(tokenizer, texts: int = 16, max_tokens: int = 256) -> list[torch.Tensor]:
    """Calibration batches from the replay corpus (stdlib docstring prose): general text, the same
    for every customer, so the quantized base does not depend on whose adapter it serves."""
    from loraops.data.replay import replay_records

    return [tokenizer(r["text"], return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]
            for r in replay_records(texts)]


def quantize_int8_(model: nn.Module, include_lm_head: bool = True, weight_only: bool = False,
                   activation_absmax: dict[str, torch.Tensor] | None = None,
                   outlier_channels: int = OUTLIER_CHANNELS, head_w8a8: bool = False,
                   smooth_body: bool = False) -> list[str]:
    """Replace every nn.Linear (also inside LoRALinear wrappers) by an Int8Linear, in place.
    Returns the quantized module paths. The LM head is usually the largest matrix (Gemma: 262k × 640).
    weight_only: the kind of every layer, except the head when head_w8a8. activation_absmax (from
    `calibrate`): each W8A8 layer's `outlier_channels` largest input channels stay fp32 — or, with
    smooth_body, the body's W8A8 layers are smoothed instead (`smoothing`, 8-bit activations where
    `full_range_activations`) and WEIGHT_ONLY_LAYERS stay weight-only."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    full = full_range_activations()
    done = []
    for path, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or (module is head and not include_lm_head):
            continue
        layer_weight_only = weight_only and not (module is head and head_w8a8)
        stats = None if activation_absmax is None else activation_absmax.get(path)
        if smooth_body and module is not head:
            layer_weight_only = stats is None or path.endswith(WEIGHT_ONLY_LAYERS)
            layer = (Int8Linear(module, True) if layer_weight_only else
                     Int8Linear(module, smooth=smoothing(stats, module.weight), full_range=full))
        else:
            outliers = None
            if stats is not None and not layer_weight_only:
                k = min(outlier_channels, module.in_features // 4)
                outliers = stats.topk(k).indices.sort().values
            layer = Int8Linear(module, layer_weight_only, outliers)
        set_submodule(model, path, layer)
        done.append(path)
    if head is not None and include_lm_head and hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False  # the head is its own int8 copy now
    return done


def quantize_for_inference_(model: nn.Module, tokenizer) -> list[str]:
    """What `--quantize int8` does to a base for serving and evaluation (module docstring): a W8A8
    body, smoothed per layer (the MLP's down projection weight-only), and the LM head — 262k × 640
    in Gemma, 60% of a token's FLOPs — W8A8 with its 32 largest input channels in fp32; smoothing
    factors and outlier channels calibrated once on general text. Call before adapters go on (LoRA
    stays fp32)."""
    stats = calibrate(model, general_calibration(tokenizer))
    return quantize_int8_(model, weight_only=True, activation_absmax=stats, head_w8a8=True, smooth_body=True)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
