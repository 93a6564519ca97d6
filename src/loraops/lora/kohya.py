"""The kohya/A1111 LoRA file (sd-scripts `networks.lora`): one .safetensors the SD community trades.

Key mapping (module path in loraops -> kohya module name; then `.lora_down.weight`, `.lora_up.weight`,
`.alpha` per module):

    unet.<path>                         lora_unet_<path with "." -> "_">
    text_encoder.<path>                 lora_te_text_model_<path ...>     (SD 1.x/2.x: one text encoder)
    text_encoder.<path>, text_encoder_2 lora_te1_text_model_..., lora_te2_text_model_...   (SDXL)

    lora_down.weight = A   [r, in] or, for a conv, [r, in, kh, kw]
    lora_up.weight   = B   [out, r] or [out, r, 1, 1]
    alpha            = a 0-dim tensor; the update is (alpha / r) · up @ down (alpha missing: alpha = r)

`text_model_` is the CLIPTextModel level checkpoints have (diffusers_format.checkpoint_name). The
UNet names are diffusers' (SD 1.x/2.x files as sd-scripts writes them). SDXL files name the UNet by
the original LDM blocks (`lora_unet_input_blocks_4_1_...`); those are refused, as are LyCORIS
variants (LoHa `hada_`, LoKr `lokr_`, `lora_mid`, `dora_scale`, full `diff` weights).

"_" is ambiguous in reverse ("to_q", "transformer_blocks"), so reading resolves names against the
base's own modules: the name each module would get is computed and looked up.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import safe_open, save_file

from loraops.errors import AdapterFormatError, AdapterMismatchError
from loraops.lora.adapter import Adapter
from loraops.lora.conv import from_peft_shapes, peft_shapes
from loraops.lora.diffusers_format import adapter_from_modules, checkpoint_name

_SUFFIXES = {".lora_down.weight": "A", ".lora_up.weight": "B", ".alpha": "alpha"}
_UNSUPPORTED = {"hada_": "LoHa", "lokr_": "LoKr", "lora_mid": "LoCon with a Tucker mid", "dora_scale": "DoRA",
                ".diff": "full weight difference"}


def kohya_name(path: str, sdxl: bool = False) -> str:
    """`unet.down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    component, _, rest = checkpoint_name(path).partition(".")
    prefix = {"unet": "lora_unet", "text_encoder": "lora_te1" if sdxl else "lora_te", "text_encoder_2": "lora_te2"}
    if component not in prefix:
        raise AdapterMismatchError(f"{path!r} is not in a UNet or text encoder; kohya files hold only those")
    return f"{prefix[component]}_{rest.replace('.', '_')}"


def to_kohya(adapter: Adapter) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (state dict, safetensors header) of a kohya LoRA file."""
    if adapter.config.use_dora or any(m.magnitude is not None for m in adapter.modules.values()):
        raise AdapterMismatchError("DoRA adapters have no kohya LoRA form (its dora_scale is another layout)")
    if adapter.saved_modules:
        raise AdapterMismatchError("adapters with modules_to_save have no kohya LoRA form")
    sdxl = any(p.startswith("text_encoder_2.") for p in adapter.modules)
    sd = {}
    for path, m in adapter.modules.items():
        name = kohya_name(path, sdxl)
        A, B, _ = peft_shapes(m)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = A.contiguous(), B.contiguous()
        sd[f"{name}.alpha"] = torch.tensor(float(m.scale) * m.r, dtype=torch.float32)  # kohya: scale = alpha / r
    ranks = sorted({m.r for m in adapter.modules.values()})
    header = {"ss_network_module": "networks.lora", "ss_network_dim": str(ranks[-1]),
              "ss_network_alpha": str(float(adapter.config.alpha))}
    if adapter.meta:
        header["loraops"] = json.dumps(adapter.meta, sort_keys=True)
    return sd, header


def save_kohya(adapter: Adapter, file: str | Path) -> Path:
    from loraops.atomic import atomic_file

    sd, header = to_kohya(adapter)
    with atomic_file(file) as tmp:
        save_file(sd, tmp, metadata=header)
    return Path(file)


def is_kohya(keys) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys)


def from_kohya(sd: dict[str, torch.Tensor], module_paths: set[str], meta: dict | None = None) -> Adapter:
    """A kohya state dict -> Adapter, its names resolved against the base's module paths."""
    sdxl = any(p.startswith("text_encoder_2.") for p in module_paths)
    lookup = {}
    for path in module_paths:
        if path.split(".", 1)[0] in ("unet", "text_encoder", "text_encoder_2"):
            lookup[kohya_name(path, sdxl)] = path
            if path.startswith("text_encoder."):  # SD 1.x files on an SDXL base, and the reverse
                lookup[kohya_name(path, not sdxl)] = path
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        for marker, what in _UNSUPPORTED.items():
            if marker in key:
                raise AdapterFormatError(f"{key!r} is a {what} tensor; loraops reads plain kohya LoRA only")
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not is_kohya([key]):
            raise AdapterFormatError(f"unexpected tensor {key!r} in a kohya LoRA file")
        name = key[: -len(suffix)]
        if name not in lookup:
            hint = " (an SDXL file names the UNet by its LDM blocks, which loraops does not map)" \
                if "input_blocks" in name or "output_blocks" in name or "middle_block" in name else ""
            raise AdapterMismatchError(f"kohya module {name!r} is no module of this base{hint}")
        parts.setdefault(lookup[name], {})[_SUFFIXES[suffix]] = tensor
    modules, alphas = {}, {}
    for path, p in parts.items():
        if "A" not in p or "B" not in p:
            raise AdapterFormatError(f"{kohya_name(path, sdxl)}: has lora_down or lora_up but not both")
        m = from_peft_shapes(path, p["A"], p["B"], None)
        alphas[path] = float(p["alpha"]) if "alpha" in p else float(m.r)
        m.scale = alphas[path] / m.r
        modules[path] = m
    if not modules:
        raise AdapterFormatError("the kohya file holds no LoRA weights")
    return adapter_from_modules(modules, alphas, meta=meta)


def read_kohya(file: str | Path, module_paths: set[str]) -> Adapter:
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["loraops"]) if "loraops" in header else {}
    return from_kohya(sd, module_paths, meta)
