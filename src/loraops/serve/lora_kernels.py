"""Batched multi-adapter LoRA: every token uses its own adapter slot.

Both functions compute, for every token t with slot s = idx[t]:

    delta[t] = scale[s] · (x[t] @ A[s]ᵀ) @ B[s]ᵀ            (slot 0 holds zeros: no adapter)

`lora_reference` is the plain-torch definition (a per-token loop). `lora_sgmv` is the fast path:
tokens are sorted by slot, and each contiguous segment of one slot costs one matmul pair (the
SGMV idea from Punica), so a batch that mixes k adapters costs k small matmul pairs whatever its
size. Slots without weights for this module (`active[s]` False) and slot 0 are skipped.

A composed request ("a:0.7+b:0.3") gives its tokens several gathered terms: term j has its own
slot per token and a per-token weight, and `lora_terms` sums them:

    delta[t] = Σ_j weight_j[t] · scale[s_j] · (x[t] @ A[s_j]ᵀ) @ B[s_j]ᵀ     with s_j = idx_j[t]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def lora_reference(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor,
                   idx: torch.Tensor) -> torch.Tensor:
    """x: [T, in], A: [N, r, in], B: [N, out, r], scale: [N], idx: [T] -> delta: [T, out]."""
    out = x.new_zeros(x.shape[0], B.shape[1])
    for t in range(x.shape[0]):
        s = int(idx[t])
        out[t] = scale[s] * ((x[t] @ A[s].T) @ B[s].T)
    return out


def segments(idx: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """idx: [T] -> (order: [T], [(slot, start, end), ...]) with idx[order] sorted and each
    (start, end) the range of one slot in that order. Computed once per forward, shared by layers."""
    order = torch.argsort(idx, stable=True)
    slots, counts = torch.unique_consecutive(idx[order], return_counts=True)
    segs, start = [], 0
    for s, c in zip(slots.tolist(), counts.tolist()):
        segs.append((s, start, start + c))
        start += c
    return order, segs


def lora_sgmv(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor,
              order: torch.Tensor, segs: list[tuple[int, int, int]],
              active: list[bool] | None = None) -> torch.Tensor:
    """Segmented gather matmul; same result as `lora_reference(x, A, B, scale, idx)` where
    (order, segs) = segments(idx). x: [T, in] -> delta: [T, out]."""
    out = x.new_zeros(x.shape[0], B.shape[1])
    live = live_segments(segs, active)
    if not live:
        return out
    xs = x[order]                                           # [T, in], grouped by slot
    ys = torch.zeros_like(out)                              # [T, out] in the same order
    for s, lo, hi in live:
        h = xs[lo:hi] @ A[s].T                              # [t, in] @ [in, r] -> [t, r]
        ys[lo:hi] = (h @ B[s].T) * scale[s]                 # [t, r] @ [r, out] -> [t, out]
    out[order] = ys
    return out


def live_segments(segs: list[tuple[int, int, int]], active: list[bool] | None) -> list[tuple[int, int, int]]:
    """The segments that contribute: a real slot (not 0) with weights for this module."""
    return [seg for seg in segs if seg[0] != 0 and (active is None or active[seg[0]])]


@dataclass(frozen=True)
class LoRATerm:
    """One gathered LoRA term of a packed forward: token t adds weight[t] · (its slot's delta)."""

    order: torch.Tensor                    # [T] token order grouping tokens by slot
    segs: list[tuple[int, int, int]]       # (slot, start, end) in that order
    weight: torch.Tensor | None = None     # [T] per-token weight; None: 1 for every token

    @classmethod
    def of(cls, idx: torch.Tensor, weight: torch.Tensor | None = None) -> LoRATerm:
        """idx: [T] slot per token (0: none), weight: [T] or None."""
        return cls(*segments(idx), weight)


def lora_terms(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor,
               terms: list[LoRATerm], active: list[bool] | None = None) -> torch.Tensor:
    """Σ_j weight_j[:, None] · lora_sgmv(x, …, terms[j]); equals Σ_j weight_j[:, None] ·
    lora_reference(x, A, B, scale, idx_j). x: [T, in] -> delta: [T, out]."""
    out = x.new_zeros(x.shape[0], B.shape[1])
    for t in terms:
        delta = lora_sgmv(x, A, B, scale, t.order, t.segs, active)   # [T, out]
        out += delta if t.weight is None else delta * t.weight[:, None].to(delta.dtype)
    return out
