"""Data parallelism without a wrapper: every process builds the same global batch, takes its rows
`rank::world`, and the LoRA gradients are summed across processes before the (identical) update.

Launched by torchrun (`torchrun --nproc_per_node=2 -m loraops train ...`), which sets RANK and
WORLD_SIZE; gloo, so it runs on CPU. Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum_(tensors: list[torch.Tensor], d: Dist) -> None:
    """Sum tensors across processes in place, as one flat buffer (one message, not one per tensor)."""
    if d.world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
