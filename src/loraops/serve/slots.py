"""The adapter slot pool: up to N adapters resident at once, as stacked tensors per target module.

Per target module path:  A: [N+1, r_max, in], B: [N+1, out, r_max], scale: [N+1]
Slot 0 is "no adapter" and stays zero. An adapter of rank r < r_max fills A[s, :r] and B[s, :, :r];
the rest stays zero, so mixed ranks share one tensor and give exactly the adapter's product.
`held[s]` is the rest of slot s's adapter (its metadata and, for an encoder classifier, the
`modules_to_save` tensors, which are not low rank and stay whole: serve/saved_modules.py).

Slots are reused least-recently-used first; a slot with running sequences is pinned and never
evicted. The pool is not thread-safe by design: only the engine thread touches it (the loader
thread only reads files and validates them, see engine.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from torch import nn

from loraops.errors import AdapterMismatchError
from loraops.lora import Adapter
from loraops.lora.layer import weight_out_in
from loraops.serve.errors import UnsupportedAdapterError


@dataclass
class SlotTensors:
    """The stacked weights of one target module. ranks[s]: the rank of slot s's adapter on this
    module (0: no weights here; A[s, ranks[s]:] and B[s, :, ranks[s]:] are zero)."""

    A: torch.Tensor        # [N+1, r_max, in]
    B: torch.Tensor        # [N+1, out, r_max]
    scale: torch.Tensor    # [N+1]
    ranks: list[int]


@dataclass
class PoolStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class SlotPool:
    def __init__(self, shapes: dict[str, tuple[int, int]], max_slots: int, max_rank: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        """shapes: module path -> (out, in) of every module an adapter may target."""
        if max_slots < 1 or max_rank < 1:
            raise ValueError("max_slots and max_rank must be >= 1")
        self.max_slots, self.max_rank = max_slots, max_rank
        n = max_slots + 1
        self.tensors = {path: SlotTensors(torch.zeros(n, max_rank, i, dtype=dtype, device=device),
                                          torch.zeros(n, o, max_rank, dtype=dtype, device=device),
                                          torch.zeros(n, dtype=dtype, device=device), [0] * n)
                        for path, (o, i) in shapes.items()}
        self._resident: OrderedDict[str, int] = OrderedDict()   # key -> slot, least recently used first
        self._pins = [0] * n
        self.held: list[Adapter | None] = [None] * n     # slot -> its adapter without the LoRA weights
        self.stats = PoolStats()

    @classmethod
    def for_model(cls, model: nn.Module, paths: list[str], max_slots: int, max_rank: int) -> SlotPool:
        weights = {p: weight_out_in(model.get_submodule(p)) for p in paths}
        first = next(iter(weights.values()))
        return cls({p: tuple(w.shape) for p, w in weights.items()}, max_slots, max_rank,
                   first.dtype, first.device)

    # ---- validation (pure; safe to call from any thread) -------------------------------------

    def check(self, adapter: Adapter) -> None:
        """Raise if `adapter` cannot live in this pool (DoRA, saved modules, unknown module, shape, rank)."""
        if adapter.config.use_dora or any(m.magnitude is not None for m in adapter.modules.values()):
            raise UnsupportedAdapterError("DoRA adapters cannot be served from the slot pool; merge it "
                                          "(`loraops merge`) and serve the merged model instead")
        if adapter.saved_modules:
            raise UnsupportedAdapterError(f"adapters with modules_to_save ({sorted(adapter.saved_modules)[0]!r}) "
                                          f"cannot be served from the slot pool")
        for path, m in adapter.modules.items():
            if path not in self.tensors:
                raise AdapterMismatchError(f"adapter targets {path!r}, which is not an adaptable linear "
                                           f"module of this base")
            t = self.tensors[path]
            if (m.out_features, m.in_features) != (t.B.shape[1], t.A.shape[2]):
                raise AdapterMismatchError(f"{path}: adapter is for a {m.out_features}x{m.in_features} weight, "
                                           f"the base has {t.B.shape[1]}x{t.A.shape[2]}")
            if m.B.shape[1] != m.r:
                raise AdapterMismatchError(f"{path}: lora_A has rank {m.r} but lora_B has rank {m.B.shape[1]}")
            if m.r > self.max_rank:
                raise UnsupportedAdapterError(f"{path}: rank {m.r} exceeds the pool's max rank "
                                              f"{self.max_rank} (start the server with a larger --max-rank)")

    # ---- residency ---------------------------------------------------------------------------

    def lookup(self, key: str) -> int | None:
        """The slot holding `key` (marking it most recently used), counting a hit or a miss."""
        slot = self._resident.get(key)
        if slot is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._resident.move_to_end(key)
        return slot

    def acquire(self, key: str) -> int:
        """Pin the resident `key` for a running sequence (marking it most recently used) -> its slot."""
        slot = self._resident[key]
        self._resident.move_to_end(key)
        self.pin(slot)
        return slot

    def resident(self) -> dict[str, int]:
        return dict(self._resident)

    def pin(self, slot: int) -> None:
        if slot:
            self._pins[slot] += 1

    def unpin(self, slot: int) -> None:
        if slot:
            assert self._pins[slot] > 0, f"slot {slot} unpinned more often than pinned"
            self._pins[slot] -= 1

    def pinned(self, slot: int) -> bool:
        return self._pins[slot] > 0

    def load(self, key: str, adapter: Adapter) -> int | None:
        """Put `adapter` in a free slot, or in the least recently used unpinned one. None if every
        slot is pinned. The adapter must have passed `check`."""
        if key in self._resident:
            return self._resident[key]
        used = set(self._resident.values())
        free = [s for s in range(1, self.max_slots + 1) if s not in used]
        if free:
            slot = free[0]
        else:
            victim = next((k for k, s in self._resident.items() if not self._pins[s]), None)
            if victim is None:
                return None
            slot = self._resident.pop(victim)
            self.stats.evictions += 1
        self._write(slot, adapter)
        self._resident[key] = slot
        return slot

    def unload(self, key: str) -> bool:
        """Drop `key` if resident and unpinned. False if it is pinned (still in use)."""
        slot = self._resident.get(key)
        if slot is None:
            return True
        if self._pins[slot]:
            return False
        del self._resident[key]
        self._write(slot, None)
        return True

    def _write(self, slot: int, adapter: Adapter | None) -> None:
        self.held[slot] = None if adapter is None else replace(adapter, modules={})
        with torch.no_grad():
            for path, t in self.tensors.items():
                m = adapter.modules.get(path) if adapter is not None else None
                t.A[slot].zero_()
                t.B[slot].zero_()
                t.scale[slot] = 0.0
                t.ranks[slot] = 0 if m is None else m.r
                if m is not None:
                    t.A[slot, : m.r].copy_(m.A)            # [r, in] into [r_max, in]
                    t.B[slot, :, : m.r].copy_(m.B)         # [out, r] into [out, r_max]
                    t.scale[slot] = m.scale
