"""What a training task gives the loop (loop.py): its data plan, its loss, its adapter config.

The loop (optimizer, schedule, accumulation, data parallelism, non-finite steps, checkpoints,
resume, metrics.jsonl, progress) is one; the tasks differ only here:

    lm               loop.LMTask             packed rows, completion-only next-token loss
    classification   classify.ClassifyTask   {"text", "label"} examples, (weighted) cross-entropy
    diffusion        diffusion.DiffusionTask images + captions, ε-prediction MSE

A task has `unit` (what throughput counts: "tokens", "examples", "images"), `plan` (an EpochPlan),
`val_items`, and these methods:

    lora_config() -> LoRAConfig            the adapter to inject (targets, modules_to_save, task_type)
    prepare(model) -> None                 anything done to the base before injection (int8, ...)
    weight(items) -> float                 what the summed loss of `items` is divided by (loss tokens,
                                           examples, class weights), known before the forward
    loss(model, items) -> (Tensor, int)    summed loss of a micro-batch, and the units it holds
    step_record(items) -> dict             extra fields of the step's metrics.jsonl line
    meta() -> dict                         extra adapter metadata (labels, resolution, ...)
"""

from __future__ import annotations

import math
import random
from typing import Callable


class EpochPlan:
    """Which items each optimizer step gets: epochs of seeded items (`epoch_items(epoch)`, a pure
    function so a resumed run rebuilds the epoch it was in), cut into steps of
    batch_size * grad_accum items. Position = (epoch, index of the step within the epoch)."""

    def __init__(self, epoch_items: Callable[[int], list], rows_per_step: int, epochs: int,
                 max_steps: int | None = None):
        self.epoch_items, self.rows_per_step = epoch_items, rows_per_step
        self.epochs, self.max_steps = epochs, max_steps
        self._cache: tuple[int, list] | None = None

    def rows(self, epoch: int) -> list:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.epoch_items(epoch))
        return self._cache[1]

    def steps_in(self, epoch: int) -> int:
        return math.ceil(len(self.rows(epoch)) / self.rows_per_step)

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return sum(self.steps_in(e) for e in range(self.epochs))

    def step_rows(self, epoch: int, index: int) -> list:
        return self.rows(epoch)[index * self.rows_per_step:(index + 1) * self.rows_per_step]

    def advance(self, epoch: int, index: int) -> tuple[int, int]:
        return (epoch, index + 1) if index + 1 < self.steps_in(epoch) else (epoch + 1, 0)


def shuffled(items: list, seed: int, epoch: int) -> list:
    """This epoch's order of `items`, seeded by (seed, epoch) as the LM task's packing is."""
    order = list(range(len(items)))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return [items[i] for i in order]
