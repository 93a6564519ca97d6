"""A module applied with each batch row's own weights: a tenant's `modules_to_save` (its trained
classifier head, or a pooler its base checkpoint lacked) in a batch that mixes tenants.

The encoder's LoRA is gathered per token by the slot pool; these modules are trained whole, so
they cannot live in a low-rank slot. Instead the base's module gives the structure and each row's
tensors are put in with `torch.func.functional_call`, one call per distinct tenant in the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from loraops.errors import AdapterMismatchError
from loraops.lora.adapter import Adapter


def module_params(adapter: Adapter, path: str) -> dict[str, torch.Tensor]:
    """The adapter's saved tensors of the module at `path`, named relative to it ("weight", "bias")."""
    prefix = path + "."
    params = {k[len(prefix):]: v for k, v in adapter.saved_modules.items() if k.startswith(prefix)}
    if not params:
        raise AdapterMismatchError(f"adapter saves no weights for {path!r}")
    return params


def per_row_apply(module: nn.Module, x: torch.Tensor, row_params: Sequence[dict[str, torch.Tensor]],
                  fill: float = float("-inf")) -> torch.Tensor:
    """x: [B, ...] the module's input; row_params[b]: row b's tensors for every parameter of
    `module` (the base's own weights are never used). Rows sharing one dict object share one call.
    -> [B, ..., out_max]: rows whose module has a narrower output (a head with fewer labels) are
    padded with `fill` (-inf keeps argmax and softmax per row right)."""
    names = set(dict(module.named_parameters()))
    groups: dict[int, list[int]] = {}
    for b, params in enumerate(row_params):
        if set(params) != names:
            raise AdapterMismatchError(f"row {b}: weights for {sorted(params)}, the module has {sorted(names)}")
        groups.setdefault(id(params), []).append(b)
    outs = [(rows, torch.func.functional_call(module, row_params[rows[0]], (x[rows],))) for rows in groups.values()]
    width = max(y.shape[-1] for _, y in outs)
    result = x.new_full((x.shape[0], *outs[0][1].shape[1:-1], width), fill, dtype=outs[0][1].dtype)
    for rows, y in outs:
        result[rows, ..., :y.shape[-1]] = y
    return result
