"""ServeDecoder: the decoder stack's forward in the engine, in few ops.

A decode step on CPU is dominated by per-op cost once the matmuls are fast: transformers' decoder
layers spend ~150 tensor ops per layer on a packed step (RMSNorm as six ops, rotary embeddings
through `rotate_half`'s slices and cat, masks built for every forward and then ignored by our
attention, dtype round trips), against ~40 here. `ServeDecoder` replaces a model's decoder stack
(`model.model`) and, inside the engine (when the runner has bound a ForwardContext to the
attention modules), runs the same layers' own modules — the LoRA-wrapped projections, the
activation, the embedding, `paged_attention` — with the glue between them written out:

    h = embed(ids)
    per layer:  a = rms(h, in_norm)
                q, k, v = q_proj(a), k_proj(a), v_proj(a)       (+ q_norm/k_norm on each head, Gemma 3)
                q, k = rope(q), rope(k)                          (cos/sin once per layer type)
                o = o_proj(paged_attention(q, k, v))
                Llama:   h = h + o;  h = h + down(act(gate(rms(h))) * up(rms(h)))
                Gemma 3: h = h + rms(o, post_attn); m = rms(h, pre_ff); h = h + rms(down(...), post_ff)
    rms(final norm)

RMSNorm is `F.rms_norm` (one fused op) with the layer's effective weight (Gemma's 1 + w, computed
once), which is how transformers computes it in fp32 up to rounding; rotary embeddings use the
model's own rotary module for cos/sin. Outside the engine (no context) it is the original module,
which stays its reference: tests compare the two on tiny Llama and Gemma 3 (logits and the KV
cache). Architectures other than Llama and Gemma 3 keep transformers' forward (`supported`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast

from loraops.serve import kv

SUPPORTED = ("llama", "gemma3_text")


def supported(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return (getattr(model.config, "model_type", None) in SUPPORTED and inner is not None
            and hasattr(inner, "layers") and hasattr(inner, "rotary_emb"))


def norm_weight(norm: nn.Module) -> tuple[torch.Tensor, float]:
    """An RMSNorm module -> (the weight its output is multiplied by, eps). Gemma's norms scale by
    1 + w (their weight is stored as an offset from 1), Llama's by w."""
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
    w = norm.weight.detach().float()
    return (1.0 + w if type(norm).__name__.startswith("Gemma") else w), float(eps)


@dataclass
class Layer:
    """One decoder layer's modules and precomputed norm weights."""

    attn: nn.Module                       # the attention module (layer_idx, serve_ctx, scaling, ...)
    q: nn.Module                          # the projections (MultiLoRALinear in the engine)
    k: nn.Module
    v: nn.Module
    o: nn.Module
    gate: nn.Module
    up: nn.Module
    down: nn.Module
    act: nn.Module
    in_norm: tuple[torch.Tensor, float]
    post_attn: tuple[torch.Tensor, float] | None      # Gemma 3: on the attention output
    pre_ff: tuple[torch.Tensor, float]                # before the MLP (Llama's post_attention_layernorm)
    post_ff: tuple[torch.Tensor, float] | None        # Gemma 3: on the MLP output
    q_norm: tuple[torch.Tensor, float] | None
    k_norm: tuple[torch.Tensor, float] | None
    layer_type: str | None                            # the rotary embedding it uses (Gemma 3: local/global)
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, layer: nn.Module, config) -> Layer:
        attn, mlp = layer.self_attn, layer.mlp
        sandwich = hasattr(layer, "pre_feedforward_layernorm")
        head_dim = getattr(attn, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(attn, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
                   mlp.down_proj, mlp.act_fn, norm_weight(layer.input_layernorm),
                   norm_weight(layer.post_attention_layernorm) if sandwich else None,
                   norm_weight(layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm),
                   norm_weight(layer.post_feedforward_layernorm) if sandwich else None,
                   norm_weight(attn.q_norm) if hasattr(attn, "q_norm") else None,
                   norm_weight(attn.k_norm) if hasattr(attn, "k_norm") else None,
                   getattr(attn, "layer_type", None), config.num_attention_heads,
                   config.num_key_value_heads, head_dim)


def rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    weight, eps = norm
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """transformers' x·cos + rotate_half(x)·sin, with rotate_half(x)·sin = roll(x, D/2)·sin_signed.
    x: [T, heads, D], cos/sin_signed: [T, 1, D] -> [T, heads, D]."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


class ServeDecoder(nn.Module):
    """Stands in for `model.model` (module docstring). `reference` is the original stack."""

    def __init__(self, reference: nn.Module, config):
        super().__init__()
        self.reference = reference
        self.config = config
        self.layers = [Layer.of(layer, config) for layer in reference.layers[: config.num_hidden_layers]]
        self.final_norm = norm_weight(reference.norm)
        self.gemma_rope = "layer_type" in reference.rotary_emb.forward.__code__.co_varnames

    @property
    def embed_tokens(self) -> nn.Module:
        """The model's input embedding (transformers' get_input_embeddings looks for it here)."""
        return self.reference.embed_tokens

    def forward(self, input_ids=None, position_ids=None, **kwargs):
        ctx = getattr(self.layers[0].attn, "serve_ctx", None)
        if ctx is None or input_ids is None or position_ids is None:
            return self.reference(input_ids=input_ids, position_ids=position_ids, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.hidden(input_ids, position_ids)[None])

    def rotary(self, h: torch.Tensor, position_ids: torch.Tensor) -> dict:
        """-> {layer_type: (cos [T, 1, D], sin_signed [T, 1, D])} for the layer types in use."""
        out = {}
        for layer_type in {layer.layer_type for layer in self.layers}:
            args = (layer_type,) if self.gemma_rope else ()
            cos, sin = self.reference.rotary_emb(h, position_ids, *args)              # [1, T, D]
            half = sin.shape[-1] // 2
            sin_signed = torch.cat([-sin[..., :half], sin[..., half:]], -1)
            out[layer_type] = (cos[0, :, None].to(h.dtype), sin_signed[0, :, None].to(h.dtype))
        return out

    def hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """input_ids, position_ids: [1, T] -> the final-normed hidden states [T, d]."""
        h = self.reference.embed_tokens(input_ids)[0]                                  # [T, d]
        rot = self.rotary(h, position_ids)
        tokens = h.shape[0]
        for layer in self.layers:
            a = rms(h, layer.in_norm)
            q = layer.q(a).view(tokens, layer.heads, layer.head_dim)
            k = layer.k(a).view(tokens, layer.kv_heads, layer.head_dim)
            v = layer.v(a).view(tokens, layer.kv_heads, layer.head_dim)
            if layer.q_norm is not None:
                q, k = rms(q, layer.q_norm), rms(k, layer.k_norm)
            cos, sin = rot[layer.layer_type]
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            attn = layer.attn
            out, _ = kv.paged_attention(attn, q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                        v.transpose(0, 1)[None], scaling=attn.scaling,
                                        sliding_window=getattr(attn, "sliding_window", None),
                                        softcap=getattr(attn, "attn_logit_softcapping", None))
            o = layer.o(out.view(tokens, -1))                                          # [T, d]
            h = h + (o if layer.post_attn is None else rms(o, layer.post_attn))
            m = rms(h, layer.pre_ff)
            d = layer.down(layer.act(layer.gate(m)) * layer.up(m))
            h = h + (d if layer.post_ff is None else rms(d, layer.post_ff))
        return rms(h, self.final_norm)


def install_decoder(model: nn.Module) -> ServeDecoder | None:
    """Put a ServeDecoder in place of `model.model` when the architecture is supported. Call it last,
    after the LoRA, linear and head swaps: it calls the modules it finds, and module paths under the
    stack gain a `reference.` prefix. None (model unchanged) otherwise."""
    if not supported(model):
        return None
    decoder = ServeDecoder(model.model, model.config.get_text_config())
    model.model = decoder
    return decoder
