"""Diffusion adapters in diffusers' own file, and the module names every SD format shares.

diffusers' `pipe.save_lora_weights` / `pipe.load_lora_weights` use one file,
`pytorch_lora_weights.safetensors`, with PEFT's tensor names under a component prefix and each
component's LoraConfig in the header:

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight     [r, in]
    unet.down_blocks.0.resnets.0.conv1.lora_B.weight                                  [out, r, 1, 1]
    text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight
    __metadata__["lora_adapter_metadata"] = {"unet.r": 4, "unet.lora_alpha": 4, ...}

`unet.save_lora_adapter` writes the same without the `unet.` prefix. loraops holds a diffusion
adapter over the pipeline's components as one module (models/diffusion.py), so its module paths
are exactly these names, with one difference: transformers ≥ 5 dropped the `text_model.` level of
CLIPTextModel (`text_encoder.encoder.layers.0...` in memory). Files are written with it, as
checkpoints and older readers expect (diffusers strips it on load), and read either way.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import safe_open, save_file

from loraops.errors import AdapterFormatError, AdapterMismatchError
from loraops.lora.adapter import Adapter, ModuleLoRA
from loraops.lora.config import LoRAConfig, config_for_modules
from loraops.lora.conv import from_peft_shapes, peft_shapes
from loraops.lora.inject import pattern_key

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def checkpoint_name(path: str) -> str:
    """Module path in memory -> the name checkpoints use: `text_model.` after a text encoder."""
    component, _, rest = path.partition(".")
    if component.startswith("text_encoder") and not rest.startswith("text_model."):
        rest = "text_model." + rest
    return f"{component}.{rest}"


def with_prefix(adapter: Adapter, component: str = "unet") -> Adapter:
    """An adapter made on one component alone (PEFT's `get_peft_model(unet, ...)`), re-rooted at
    the pipeline's components: every module path, saved tensor and pattern gets `component.`."""
    def re_root(d: dict) -> dict:
        return {f"{component}.{k}": v for k, v in d.items()}
    c = adapter.config
    target = c.target_modules if isinstance(c.target_modules, list) else rf"{component}\.(?:{c.target_modules})"
    config = replace(c, target_modules=target, rank_pattern=re_root(c.rank_pattern), alpha_pattern=re_root(c.alpha_pattern),
                     modules_to_save=[f"{component}.{m}" for m in c.modules_to_save] if c.modules_to_save else None)
    return Adapter(config, re_root(adapter.modules), re_root(adapter.saved_modules), dict(adapter.meta))


def rooted(adapter: Adapter) -> Adapter:
    """`adapter` with pipeline-component paths: as it is if they already start with a component,
    else taken to be a UNet adapter (the usual PEFT/diffusers export of `unet` alone)."""
    if all(p.split(".", 1)[0] in COMPONENTS for p in adapter.modules):
        return adapter
    return with_prefix(adapter, "unet")


def resolve(name: str, module_paths: set[str]) -> str:
    """A checkpoint name ("text_encoder.text_model.encoder...") -> the module path of this base."""
    if name in module_paths:
        return name
    component, _, rest = name.partition(".")
    bare = f"{component}.{rest.removeprefix('text_model.')}"
    if bare in module_paths:
        return bare
    raise AdapterMismatchError(f"LoRA weights for {name!r}, which is no module of this base")


def adapter_from_modules(modules: dict[str, ModuleLoRA], alphas: dict[str, float], use_rslora: bool = False,
                         meta: dict | None = None) -> Adapter:
    """Modules read from an SD file (alphas per module) -> an Adapter with a PEFT config for them."""
    use_dora = any(m.magnitude is not None for m in modules.values())
    config = config_for_modules({p: m.r for p, m in modules.items()}, alphas, use_rslora=use_rslora,
                                use_dora=use_dora, task_type=None)
    return Adapter(config, modules, {}, dict(meta or {}))


def to_diffusers(adapter: Adapter) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (state dict, safetensors header) of `pytorch_lora_weights.safetensors`."""
    if adapter.saved_modules:
        raise AdapterMismatchError("adapters with modules_to_save have no diffusers LoRA file form")
    sd, per_component = {}, {}
    for path, m in adapter.modules.items():
        A, B, magnitude = peft_shapes(m)
        name = checkpoint_name(path)
        sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"] = A.contiguous(), B.contiguous()
        if magnitude is not None:
            sd[f"{name}.lora_magnitude_vector"] = magnitude.contiguous()
        per_component.setdefault(path.split(".", 1)[0], {})[path.split(".", 1)[1]] = m
    metadata = {}
    c = adapter.config
    for component, mods in per_component.items():
        alphas = {p: m.scale * (m.r ** 0.5 if c.use_rslora else m.r) for p, m in mods.items()}
        sub = config_for_modules({p: m.r for p, m in mods.items()}, alphas, use_rslora=c.use_rslora,
                                 use_dora=c.use_dora, task_type=None).to_peft()
        metadata.update({f"{component}.{k}": v for k, v in sub.items()})
    header = {"format": "pt", METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    if adapter.meta:
        header["loraops"] = json.dumps(adapter.meta, sort_keys=True)
    return sd, header


def save_diffusers(adapter: Adapter, out_dir: str | Path) -> Path:
    """Write DIR/pytorch_lora_weights.safetensors (what `pipe.load_lora_weights(DIR)` reads)."""
    from loraops.atomic import atomic_dir

    sd, header = to_diffusers(adapter)
    with atomic_dir(out_dir) as tmp:
        save_file(sd, tmp / WEIGHTS_FILE, metadata=header)
    return Path(out_dir)


def read_diffusers(file: str | Path, module_paths: set[str]) -> Adapter:
    """Read a diffusers LoRA file onto a base whose adaptable module paths are `module_paths`."""
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    metadata = json.loads(header.get(METADATA_KEY) or "{}")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    suffixes = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_magnitude_vector": "magnitude"}
    for key, tensor in sd.items():
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        if suffix is None:
            raise AdapterFormatError(f"{file}: unsupported tensor {key!r} (expected PEFT-style lora_A/lora_B)")
        name = key[: -len(suffix)]
        if name.split(".", 1)[0] not in COMPONENTS:
            name = f"unet.{name}"  # `unet.save_lora_adapter` writes no prefix
        parts.setdefault(resolve(name, module_paths), {})[suffixes[suffix]] = tensor
    modules, alphas, rslora = {}, {}, set()
    for path, p in parts.items():
        if "A" not in p or "B" not in p:
            raise AdapterFormatError(f"{file}: {path} lacks lora_A or lora_B")
        m = from_peft_shapes(path, p["A"], p["B"], p.get("magnitude"))
        component, _, rest = path.partition(".")
        cfg = _component_config(metadata, component, m.r)
        akey = pattern_key(cfg.alpha_pattern, rest)
        alphas[path] = float(cfg.alpha_pattern[akey] if akey else cfg.alpha)
        m.scale = cfg.scale(m.r, alphas[path])
        modules[path] = m
        rslora.add(cfg.use_rslora)
    if not modules:
        raise AdapterFormatError(f"{file} holds no LoRA weights")
    if len(rslora) > 1:
        raise AdapterFormatError(f"{file}: components disagree on use_rslora")
    meta = json.loads(header["loraops"]) if "loraops" in header else {}
    return adapter_from_modules(modules, alphas, rslora.pop(), meta)


def _component_config(metadata: dict, component: str, r: int) -> LoRAConfig:
    """The component's LoraConfig from the header; without one, diffusers' default: alpha = r."""
    prefix = f"{component}."
    raw = {k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)}
    if not raw:
        return LoRAConfig(r=r, alpha=r)
    raw["alpha_pattern"] = {k.lstrip("^"): v for k, v in (raw.get("alpha_pattern") or {}).items()}
    raw["rank_pattern"] = {}  # ranks come from the tensors
    return LoRAConfig.from_peft({**raw, "target_modules": raw.get("target_modules") or ["_"]})
