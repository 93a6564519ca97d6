"""Batched multi-adapter LoRA: every token uses its own adapter slot.

Every kernel here computes, for every token t with slot s = idx[t]:

    delta[t] = scale[s] · (x[t] @ A[s]ᵀ) @ B[s]ᵀ            (slot 0 holds zeros: no adapter)

`lora_reference` is the plain-torch definition (a per-token loop). The fast paths group tokens by
slot (the SGMV idea from Punica) and only touch the slots in use, trimmed to the largest rank
among them (a slot of rank r < r_max is zero beyond r):

- `lora_padded`: the k slots' token groups padded to one width L and run as two batched matmuls,
  [k, L, in] @ [k, in, r] and [k, L, r] @ [k, r, out]. About ten tensor ops per layer whatever k,
  which matters on CPU, where a decode step's LoRA matmuls are tiny and per-op overhead is the cost:
  at 32 tokens over 13 adapters it is 2.8x faster than one matmul pair per slot (bench/kernels.py).
- `lora_sgmv`: one matmul pair per slot. For lopsided batches — one sequence's long prompt next
  to other sequences' single decode tokens — where padding every group to the longest would
  multiply the work.
- one slot for every token (batch 1, or a batch all on one adapter): two plain matmuls on the
  slot's weights, no gather or scatter. (Not for mixed steps: a token multiplied by another slot's
  weights, even masked to zero, would take in that adapter's NaN or inf — one tenant's bad adapter
  must stay in its own rows.)

The padded and single-slot paths read the slots' A and B stacked (`stack_slots`: the slots in use, cut to
the rank in use, B transposed with the slot's scale folded in). A step's set of adapters changes far
less often than every step, so each layer keeps its last stacks (`StackCache`) until the pool's
tensors change; gathering them anew in every layer of every step was half of the LoRA time.

A composed request ("a:0.7+b:0.3") gives its tokens several gathered terms: term j has its own
slot per token and a per-token weight, and `lora_terms` sums them:

    delta[t] = Σ_j weight_j[t] · scale[s_j] · (x[t] @ A[s_j]ᵀ) @ B[s_j]ᵀ     with s_j = idx_j[t]
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# Pad the groups when k · L <= PAD_WASTE · n + PAD_SLACK (n tokens use an adapter): a padded row
# costs a gathered input row and an output row, negligible next to a decode step's per-op overhead
# until a long prompt makes every group as wide as itself.
PAD_WASTE, PAD_SLACK = 2, 128


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


def used_rank(segs: list[tuple[int, int, int]], ranks: list[int] | None) -> int | None:
    """The largest rank among the segments' real slots (not 0); 0 when none has weights for this
    module. None (no ranks given): every slot counts at full rank."""
    if ranks is None:
        return None if any(s != 0 for s, _, _ in segs) else 0
    return max((ranks[s] for s, _, _ in segs if s != 0), default=0)


def lora_sgmv(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor,
              order: torch.Tensor, segs: list[tuple[int, int, int]],
              ranks: list[int] | None = None) -> torch.Tensor:
    """Segmented gather matmul; same result as `lora_reference(x, A, B, scale, idx)` where
    (order, segs) = segments(idx). ranks[s]: slot s's rank on this module (0: no weights, skipped).
    x: [T, in] -> delta: [T, out]."""
    out = x.new_zeros(x.shape[0], B.shape[1])
    live = [seg for seg in segs if seg[0] != 0 and (ranks is None or ranks[seg[0]])]
    if not live:
        return out
    xs = x[order]                                           # [T, in], grouped by slot
    ys = torch.zeros_like(out)                              # [T, out] in the same order
    for s, lo, hi in live:
        r = A.shape[1] if ranks is None else ranks[s]
        h = xs[lo:hi] @ A[s, :r].T                          # [t, in] @ [in, r] -> [t, r]
        ys[lo:hi] = (h @ B[s, :, :r].T) * scale[s]          # [t, r] @ [r, out] -> [t, out]
    out[order] = ys
    return out


@dataclass(frozen=True)
class PaddedGroups:
    """The tokens that use an adapter, grouped by slot, each group padded to `width` positions.
    Padding positions read token 0 (any real row: their results are never used)."""

    slots: torch.Tensor      # [k] the real slots in use
    width: int               # L, the largest group
    gather: torch.Tensor     # [k * L] the token at each padded position
    valid: torch.Tensor      # [n] the padded positions that hold a real token ...
    tokens: torch.Tensor     # [n] ... and which token that is

    @classmethod
    def of(cls, order: torch.Tensor, segs: list[tuple[int, int, int]]) -> PaddedGroups | None:
        """None when no token uses an adapter or padding would waste too much (PAD_WASTE)."""
        live = [seg for seg in segs if seg[0] != 0]
        n = sum(hi - lo for _, lo, hi in live)
        width = max((hi - lo for _, lo, hi in live), default=0)
        if not live or len(live) * width > PAD_WASTE * n + PAD_SLACK:
            return None
        gather = torch.zeros(len(live) * width, dtype=torch.long)
        valid = torch.cat([torch.arange(j * width, j * width + hi - lo) for j, (_, lo, hi) in enumerate(live)])
        tokens = torch.cat([order[lo:hi] for _, lo, hi in live])
        gather[valid] = tokens
        return cls(torch.tensor([s for s, _, _ in live]), width, gather, valid, tokens)


def stack_slots(A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor,
                rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k `slots`' weights, cut to `rank` (all when None), stacked for the padded and single-slot paths.
    A: [N, r_max, in], B: [N, out, r_max], scale: [N], slots: [k]
    -> a: [k * r, in] (slot j's rows at j*r:(j+1)*r), b: [k * r, out] (scale[s] · B[s, :, :r]ᵀ)."""
    r = A.shape[1] if rank is None else rank
    k = len(slots)
    a = A.index_select(0, slots)[:, :r].reshape(k * r, A.shape[2])
    b = B.index_select(0, slots)[:, :, :r] * scale.index_select(0, slots).view(k, 1, 1)    # [k, out, r]
    return a, b.transpose(1, 2).reshape(k * r, B.shape[1])


def lora_padded(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor,
                groups: PaddedGroups, rank: int | None = None) -> torch.Tensor:
    """Same result as `lora_reference(x, A, B, scale, idx)` for the idx that `groups` was built
    from, using only the first `rank` columns of A/B (all when None). x: [T, in] -> delta: [T, out]."""
    return lora_padded_stacked(x, *stack_slots(A, B, scale, groups.slots, rank), groups)


def lora_padded_stacked(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, groups: PaddedGroups) -> torch.Tensor:
    """`lora_padded` on the groups' slots stacked by `stack_slots` (a: [k * r, in], b: [k * r, out]).
    x: [T, in] -> delta: [T, out]."""
    k, width = len(groups.slots), groups.width
    r = a.shape[0] // k
    xs = x.index_select(0, groups.gather).view(k, width, x.shape[1])               # [k, L, in]
    h = torch.bmm(xs, a.view(k, r, -1).transpose(1, 2))                            # [k, L, r]
    y = torch.bmm(h, b.view(k, r, -1)).view(k * width, b.shape[1])                  # [k * L, out]
    out = x.new_zeros(x.shape[0], b.shape[1])
    return out.index_add_(0, groups.tokens, y.index_select(0, groups.valid))


class StackCache:
    """One module's recent `stack_slots` results, valid while the pool's A, B and scale are unchanged
    (their version counters: every write to a slot bumps them). Bounded: `size` entries, each at
    most the pool tensors' size."""

    def __init__(self, size: int = 2):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor, slot_key: tuple,
            rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        key = (slot_key, rank, A._version, B._version, scale._version)
        hit = self._entries.get(key)
        if hit is None:
            hit = self._entries[key] = stack_slots(A, B, scale, slots, rank)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return hit


@dataclass(frozen=True)
class LoRATerm:
    """One gathered LoRA term of a packed forward: token t adds weight[t] · (its slot's delta)."""

    order: torch.Tensor                    # [T] token order grouping tokens by slot
    segs: list[tuple[int, int, int]]       # (slot, start, end) in that order
    weight: torch.Tensor | None = None     # [T] per-token weight; None: 1 for every token
    padded: PaddedGroups | None = None     # the layout for lora_padded; None: use lora_sgmv
    slots: torch.Tensor | None = None      # [k] the real slots in use (None: none)
    single: bool = False                   # every token uses slots[0]: two plain matmuls

    @classmethod
    def of(cls, idx: torch.Tensor, weight: torch.Tensor | None = None) -> LoRATerm:
        """idx: [T] slot per token (0: none), weight: [T] or None."""
        order, segs = segments(idx)
        live = [s for s, _, _ in segs if s != 0]
        slots = torch.tensor(live) if live else None
        return cls(order, segs, weight, PaddedGroups.of(order, segs), slots, len(segs) == 1 and bool(live))

    @property
    def slot_key(self) -> tuple:
        return tuple(s for s, _, _ in self.segs if s != 0)

    def delta(self, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor,
              ranks: list[int] | None = None, stacks: StackCache | None = None) -> torch.Tensor | None:
        """This term's weighted delta for x: [T, in] -> [T, out]; None if no token's slot has
        weights for this module (ranks as in `lora_sgmv`). `stacks`: the module's StackCache (the
        stacked slots are recomputed without one)."""
        rank = used_rank(self.segs, ranks)
        if rank == 0:
            return None
        if not self.single and self.padded is None:
            delta = lora_sgmv(x, A, B, scale, self.order, self.segs, ranks)
        else:
            a, b = (stack_slots(A, B, scale, self.slots, rank) if stacks is None else
                    stacks.get(A, B, scale, self.slots, self.slot_key, rank))
            delta = (x @ a.T) @ b if self.single else lora_padded_stacked(x, a, b, self.padded)
        return delta if self.weight is None else delta * self.weight[:, None].to(delta.dtype)


def lora_terms(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor,
               terms: list[LoRATerm], ranks: list[int] | None = None,
               stacks: StackCache | None = None) -> torch.Tensor | None:
    """Σ_j term_j.delta(x, ...), which equals Σ_j weight_j[:, None] · lora_reference(x, A, B,
    scale, idx_j). x: [T, in] -> delta: [T, out]; None when no term touches this module."""
    out = None
    for t in terms:
        delta = t.delta(x, A, B, scale, ranks, stacks)
        if delta is not None:
            out = delta if out is None else out + delta
    return out
