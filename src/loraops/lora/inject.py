"""Target selection and injection: which modules get a LoRALinear (or a LoRAConv), and putting them in or out."""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from loraops.errors import AdapterMismatchError, TargetNotFoundError
from loraops.lora.adapter import Adapter
from loraops.lora.config import ALL_LINEAR, LoRAConfig
from loraops.lora.conv import LoRAConv, check_conv, is_conv
from loraops.lora.layer import LoRALinear, is_adaptable, weight_out_in

LORA_LAYERS = (LoRALinear, LoRAConv)

# PEFT's default for classification heads it never adapts under "all-linear".
_SEQ_CLS_HEADS = ("score", "classifier")


def _layer_index(path: str, patterns: list[str] | None) -> int | None:
    """The transformer-block index in a module path, the way PEFT finds it."""
    for pattern in patterns or [r"[^.]*"]:
        m = re.match(rf".*\.{pattern}\.(\d+)\.", path)
        if m:
            return int(m.group(1))
    return None


def _excluded_heads(model: nn.Module, config: LoRAConfig) -> set[str]:
    heads = set(config.modules_to_save or [])
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is not None:
        heads |= {name for name, m in model.named_modules() if m is out_emb}
    else:
        heads |= {n for n in _SEQ_CLS_HEADS if hasattr(model, n)}
    return heads


def pattern_key(patterns: dict, path: str) -> str | None:
    """The rank_pattern/alpha_pattern key that applies to `path` (PEFT's rule), or None."""
    if path in patterns:
        return path
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", path):
            return key
    return None


def select_targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Module paths that `config` adapts, in model order. Raises if the selection is empty or
    names a module that is not a Linear/Conv1D/ConvNd. "all-linear" never picks convs (PEFT's rule);
    name them (`conv1`, `conv2`, ...) to adapt them."""
    target = config.target_modules
    heads = _excluded_heads(model, config)
    chosen = []
    for path, module in model.named_modules():
        if not path or isinstance(module, LORA_LAYERS) or any(path == h or path.startswith(h + ".") for h in heads):
            continue
        if target == ALL_LINEAR:
            hit = is_adaptable(module)
        elif isinstance(target, str):
            hit = re.fullmatch(target, path) is not None
        else:
            hit = path in target or any(path.endswith("." + t) for t in target)
            if hit and config.layers_to_transform is not None:
                hit = _layer_index(path, config.layers_pattern) in config.layers_to_transform
        if not hit:
            continue
        if not is_adaptable(module):
            if target == ALL_LINEAR:
                continue
            if not is_conv(module):
                raise TargetNotFoundError(f"target module {path!r} is a {type(module).__name__}; only Linear, "
                                          "Conv1D and Conv1d/2d/3d can be adapted")
            check_conv(path, module)
        chosen.append(path)
    if not chosen:
        raise TargetNotFoundError(f"target_modules={target!r} matches no Linear/Conv module of this model")
    return chosen


def _resolve_names(config: LoRAConfig, paths: list[str]) -> LoRAConfig:
    """Record "all-linear" as the concrete module paths it matched, as PEFT (0.21) does when it saves."""
    if config.target_modules == ALL_LINEAR:
        config.target_modules = sorted(paths)
    return config


def inject(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every selected module in a LoRALinear or LoRAConv (in place); freezes all base parameters.
    Returns the adapted paths. `config.fan_in_fan_out` and "all-linear" are resolved here."""
    paths = select_targets(model, config)
    model.requires_grad_(False)
    for path in paths:
        base = model.get_submodule(path)
        if isinstance(base, Conv1D):
            config.fan_in_fan_out = True
        rkey, akey = pattern_key(config.rank_pattern, path), pattern_key(config.alpha_pattern, path)
        r = config.rank_pattern[rkey] if rkey else config.r
        alpha = config.alpha_pattern[akey] if akey else config.alpha
        layer = LoRAConv if is_conv(base) else LoRALinear
        set_submodule(model, path, layer(base, r, config.scale(r, alpha), config.dropout, config.use_dora, config.init))
    for name in saved_module_names(model, config):
        model.get_submodule(name).requires_grad_(True)
    _resolve_names(config, paths)
    return paths


def saved_module_names(model: nn.Module, config: LoRAConfig) -> list[str]:
    """`modules_to_save` that exist in this model (PEFT lists both "classifier" and "score" for
    SEQ_CLS and ignores the one a model lacks)."""
    names = dict(model.named_modules())
    return [n for n in config.modules_to_save or [] if n in names]


def lora_modules(model: nn.Module) -> dict[str, LoRALinear | LoRAConv]:
    return {path: m for path, m in model.named_modules() if isinstance(m, LORA_LAYERS)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def extract(model: nn.Module, config: LoRAConfig, meta: dict | None = None) -> Adapter:
    """The adapter currently inside `model`, as a model-independent Adapter (tensors copied)."""
    modules = {path: m.weights() for path, m in lora_modules(model).items()}
    saved = {}
    for name in saved_module_names(model, config):
        for pname, p in model.get_submodule(name).named_parameters():
            saved[f"{name}.{pname}"] = p.detach().clone()
    return Adapter(config, modules, saved, dict(meta or {}))


def apply_adapter(model: nn.Module, adapter: Adapter) -> list[str]:
    """Inject `adapter` into a bare base model and load its weights, checking that it fits exactly:
    the modules its config selects on this model are exactly the modules it has weights for, with
    matching shapes. Anything else is an AdapterMismatchError naming the first problem."""
    config = LoRAConfig.from_dict(adapter.config.to_dict())
    try:
        expected = select_targets(model, config)
    except TargetNotFoundError as e:
        raise AdapterMismatchError(f"adapter does not fit this base: {e}") from e
    missing = [p for p in expected if p not in adapter.modules]
    extra = [p for p in adapter.modules if p not in expected]
    if extra:
        raise AdapterMismatchError(f"adapter has weights for {len(extra)} module(s) this base does not have "
                                   f"or its config does not target, e.g. {extra[0]!r}")
    if missing:
        raise AdapterMismatchError(f"adapter is missing weights for {len(missing)} targeted module(s), "
                                   f"e.g. {missing[0]!r}")
    for path in expected:
        base = model.get_submodule(path)
        base_shape = tuple(weight_out_in(base).shape)
        w = adapter.modules[path]
        if (w.out_features, w.in_features) != base_shape:
            raise AdapterMismatchError(f"{path}: adapter is for a {w.out_features}x{w.in_features} weight, "
                                       f"the base has {base_shape[0]}x{base_shape[1]}")
        kernel = tuple(base.kernel_size) if is_conv(base) else ()
        if w.kernel_size != kernel:
            raise AdapterMismatchError(f"{path}: adapter is for kernel size {w.kernel_size or 'none (linear)'}, "
                                       f"the base has {kernel or 'none (linear)'}")
        if w.B.shape[1] != w.r or (w.magnitude is not None and w.magnitude.shape[0] != w.out_features):
            raise AdapterMismatchError(f"{path}: lora_A has rank {w.r} but lora_B has rank {w.B.shape[1]}")
        if (w.magnitude is not None) != config.use_dora:
            raise AdapterMismatchError(f"{path}: DoRA magnitude present={w.magnitude is not None} "
                                       f"but use_dora={config.use_dora}")
    # Ranks come from the tensors, so rank_pattern only has to agree with them.
    config.rank_pattern = {**config.rank_pattern, **{p: w.r for p, w in adapter.modules.items() if w.r != config.r}}
    inject(model, config)
    for path, layer in lora_modules(model).items():
        layer.load_weights(adapter.modules[path])
    state = dict(model.named_parameters())
    for key, tensor in adapter.saved_modules.items():
        if key not in state:
            raise AdapterMismatchError(f"adapter saves {key!r}, which this base does not have")
        if state[key].shape != tensor.shape:
            raise AdapterMismatchError(f"{key}: adapter has shape {tuple(tensor.shape)}, "
                                       f"base has {tuple(state[key].shape)}")
        with torch.no_grad():
            state[key].copy_(tensor)
    return expected


def remove(model: nn.Module, merge: bool = False) -> None:
    """Put the base modules back (merging ΔW into them first if asked)."""
    for path, layer in lora_modules(model).items():
        if merge:
            layer.merge_()
        set_submodule(model, path, layer.base)


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at `path` ("model.layers.0.self_attn.q_proj") in place of what is there."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
