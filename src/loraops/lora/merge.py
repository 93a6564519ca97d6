"""Merge and unmerge as pure functions, computed in fp32 whatever the storage dtype, then cast.

Plain LoRA:  W' = W + scale · B @ A
DoRA:        W' = m / ‖W + scale · B @ A‖_row · (W + scale · B @ A)
Weights are [out, in]; GPT-2 Conv1D stores [in, out], flagged by the adapter's `fan_in_fan_out`;
a conv kernel [out, in, *k] is merged flattened, as [out, in·∏k] (lora/conv.py).
"""

from __future__ import annotations

import torch

from loraops.errors import AdapterMismatchError
from loraops.lora.adapter import Adapter, ModuleLoRA


def lora_delta(A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """A: [r, in], B: [out, r] -> ΔW: [out, in] in fp32."""
    return (B.float() @ A.float()) * scale


def row_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """‖W + ΔW‖ over the input dim: [out, in] -> [out], fp32."""
    return torch.linalg.vector_norm(weight.float() + delta.float(), dim=1)


def merge_weight(weight: torch.Tensor, lora: ModuleLoRA) -> torch.Tensor:
    """weight: [out, in] -> merged [out, in] in weight's dtype."""
    merged = weight.float() + lora_delta(lora.A, lora.B, lora.scale)
    if lora.magnitude is not None:
        merged = merged * (lora.magnitude.float() / torch.linalg.vector_norm(merged, dim=1)).unsqueeze(1)
    return merged.to(weight.dtype)


def unmerge_weight(weight: torch.Tensor, lora: ModuleLoRA) -> torch.Tensor:
    """Inverse of merge_weight for plain LoRA. DoRA loses the row norms in W', so it cannot be undone."""
    if lora.magnitude is not None:
        raise ValueError("a DoRA merge cannot be undone from the merged weight alone")
    return (weight.float() - lora_delta(lora.A, lora.B, lora.scale)).to(weight.dtype)


def _apply(state_dict: dict[str, torch.Tensor], adapter: Adapter, fn) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    for path, lora in adapter.modules.items():
        key = f"{path}.weight"
        if key not in out:
            raise AdapterMismatchError(f"adapter module {path!r} has no weight {key!r} in the base model")
        w = out[key]
        transposed = adapter.config.fan_in_fan_out and w.ndim == 2
        w_oi = w.T if transposed else w.flatten(1)
        if tuple(w_oi.shape) != (lora.out_features, lora.in_features) or tuple(w.shape[2:]) != lora.kernel_size:
            raise AdapterMismatchError(
                f"{path}: base weight is {tuple(w.shape)} but the adapter expects "
                f"{(lora.out_features, lora.in_features)}" + (f" kernel {lora.kernel_size}" if lora.kernel_size else ""))
        new = fn(w_oi, lora)
        out[key] = (new.T if transposed else new.view(w.shape)).contiguous()
    return out


def merge_state_dict(state_dict: dict[str, torch.Tensor], adapter: Adapter) -> dict[str, torch.Tensor]:
    """Base state dict -> merged state dict (a new dict; the input is not modified).

    `modules_to_save` weights (e.g. a classifier head) replace the base's.
    """
    merged = _apply(state_dict, adapter, merge_weight)
    for key, tensor in adapter.saved_modules.items():
        if key not in merged:
            raise AdapterMismatchError(f"adapter saves {key!r}, which the base model does not have")
        merged[key] = tensor.to(merged[key].dtype)
    return merged


def unmerge_state_dict(state_dict: dict[str, torch.Tensor], adapter: Adapter) -> dict[str, torch.Tensor]:
    """Merged state dict -> base state dict (plain LoRA; `modules_to_save` cannot be restored)."""
    return _apply(state_dict, adapter, unmerge_weight)
