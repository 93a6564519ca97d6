"""Diffusion bases: a diffusers pipeline directory (Stable Diffusion 1.x/2.x, SDXL layout).

    BASE/model_index.json
    BASE/unet/            UNet2DConditionModel (safetensors)
    BASE/text_encoder/    CLIPTextModel            BASE/text_encoder_2/  (SDXL) CLIPTextModelWithProjection
    BASE/tokenizer/ ...   BASE/vae/  BASE/scheduler/

An adapter adapts the components it can change as one module, an `nn.ModuleDict` with keys
`unet`, `text_encoder` (and `text_encoder_2`): its module paths are `unet.down_blocks.0...` and
`text_encoder.encoder.layers.0...`, so inject/apply/merge/compose/registry work unchanged, and
the base fingerprint is over the same tensor names (models/fingerprint.py).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraops.atomic import atomic_dir
from loraops.errors import MergeVerificationError, ModelNotFoundError
from loraops.lora import Adapter, apply_adapter, merge_state_dict
from loraops.models.fingerprint import PIPELINE_COMPONENTS
from loraops.models.resolve import BaseInfo, resolve_base

PROBE_PROMPTS = ["a photo of a dog", "an oil painting of a lighthouse at night"]


def is_pipeline_dir(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


@dataclass
class DiffusionBase:
    model: nn.ModuleDict            # the adaptable components: unet, text_encoder[, text_encoder_2]
    tokenizer: object               # of text_encoder
    info: BaseInfo
    vae: nn.Module | None = None    # loaded for training only (images -> latents)
    noise_scheduler: object = None  # DDPMScheduler from BASE/scheduler, for training


def load_components(path: Path, dtype: torch.dtype = torch.float32) -> nn.ModuleDict:
    import transformers
    from diffusers import UNet2DConditionModel

    components = {"unet": UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype,
                                                               use_safetensors=True)}
    for name in PIPELINE_COMPONENTS[1:]:
        if (path / name).is_dir():
            config = transformers.AutoConfig.from_pretrained(path / name)
            cls = getattr(transformers, (config.architectures or ["CLIPTextModel"])[0])
            components[name] = cls.from_pretrained(path / name, dtype=dtype, use_safetensors=True)
    return nn.ModuleDict(components).eval()


def load_diffusion_base(spec: str, for_training: bool = False, dtype: torch.dtype = torch.float32) -> DiffusionBase:
    """For training the components and the VAE go to the GPU when there is one (SD 1.5 at 512 px is
    impractical on a CPU); the LoRA tensors follow them."""
    from transformers import AutoTokenizer

    info = resolve_base(spec, progress=True)
    if not is_pipeline_dir(info.path):
        raise ModelNotFoundError(f"{spec} is not a diffusers pipeline directory (no model_index.json); "
                                 "diffusion needs one, e.g. a local copy of stable-diffusion-v1-5")
    base = DiffusionBase(load_components(info.path, dtype), AutoTokenizer.from_pretrained(info.path / "tokenizer"),
                         info)
    if for_training:
        from diffusers import AutoencoderKL, DDPMScheduler

        device = "cuda" if torch.cuda.is_available() else "cpu"
        base.vae = AutoencoderKL.from_pretrained(info.path / "vae", torch_dtype=dtype,
                                                 use_safetensors=True).eval().requires_grad_(False).to(device)
        base.model.to(device)
        base.noise_scheduler = DDPMScheduler.from_pretrained(info.path / "scheduler")
    return base


def encode_prompts(text_encoder: nn.Module, tokenizer, prompts: list[str]) -> torch.Tensor:
    """-> the UNet's cross-attention input [batch, tokens, hidden]: the text encoder's last hidden
    state over prompts padded to the tokenizer's max length, as StableDiffusionPipeline does."""
    max_len = min(getattr(tokenizer, "model_max_length", 77) or 77, 77,
                  text_encoder.config.max_position_embeddings)
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return text_encoder(ids["input_ids"].to(text_encoder.device))[0]


@torch.no_grad()
def probe_outputs(components: nn.ModuleDict, tokenizer, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed inputs through every component: the text encoder on PROBE_PROMPTS, the UNet on seeded
    latents at an early and a late timestep with those prompts. What merge verifies on."""
    unet = components["unet"]
    hidden = encode_prompts(components["text_encoder"], tokenizer, PROBE_PROMPTS)
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    latents = torch.randn(len(PROBE_PROMPTS), unet.config.in_channels, size, size, generator=g)
    out = {"text_encoder": hidden}
    if "text_encoder_2" in components:  # SDXL's UNet needs added conditioning: verify the encoders and skip it
        out["text_encoder_2"] = encode_prompts(components["text_encoder_2"], tokenizer, PROBE_PROMPTS)
        return out
    timesteps = torch.tensor([10, 900])[:len(PROBE_PROMPTS)]
    out["unet"] = unet(latents.to(unet.dtype), timesteps, hidden.to(unet.dtype)).sample
    return out


def max_output_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def import_adapter(src: str | Path, base: str, force: bool = False) -> Adapter:
    """Read an SD adapter in any format (lora/convert.py) for the pipeline `base`, check that it
    fits the base exactly (modules and shapes), and bind it to the base's fingerprint unless it
    already names one (then the binding is checked)."""
    from loraops.lora.convert import detect, read_any
    from loraops.models.load import check_base

    detect(Path(src))  # a pickle or missing file fails before minutes of loading a base
    info = resolve_base(base, progress=True)
    if not is_pipeline_dir(info.path):
        raise ModelNotFoundError(f"{base} is not a diffusers pipeline directory (no model_index.json)")
    components = load_components(info.path)
    adapter = read_any(src, {p for p, _ in components.named_modules()})
    check_base(adapter, info.name, info.fingerprint, force)
    apply_adapter(components, adapter)
    adapter.meta.setdefault("base_fingerprint", info.fingerprint)
    adapter.meta.setdefault("base_name", info.name)
    adapter.meta.setdefault("imported_from", str(src))
    return adapter


def merge_pipeline_to_dir(info: BaseInfo, adapter: Adapter, out_dir: str | Path, tolerance: float
                          ) -> float:
    """Fold `adapter` into the pipeline at `info.path` and write a whole pipeline directory (the
    untouched components copied). Fails unless the merged components' outputs on the probe match
    the unmerged adapter's within `tolerance`. -> the max abs difference."""
    from transformers import AutoTokenizer

    from loraops.lora.diffusers_format import rooted

    adapter = rooted(adapter)
    components = load_components(info.path)
    tokenizer = AutoTokenizer.from_pretrained(info.path / "tokenizer")
    merged = copy.deepcopy(components)
    merged.load_state_dict(merge_state_dict(components.state_dict(), adapter))
    apply_adapter(components, adapter)  # the unmerged reference
    diff = max_output_diff(probe_outputs(components, tokenizer), probe_outputs(merged, tokenizer))
    if not diff <= tolerance:
        raise MergeVerificationError(f"merged outputs differ from the adapter's by {diff:.3e} > {tolerance:g}")
    adapted = {path.split(".", 1)[0] for path in adapter.modules} | {k.split(".", 1)[0] for k in adapter.saved_modules}
    with atomic_dir(out_dir) as tmp:
        for item in info.path.iterdir():
            if item.name in adapted or item.name.startswith(".loraops"):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        for name in sorted(adapted):
            merged[name].save_pretrained(tmp / name, safe_serialization=True)
        lineage = {"merged_from": {"base_name": info.name, "base_fingerprint": info.fingerprint,
                                   "adapter_meta": adapter.meta},
                   "max_abs_output_diff": diff}
        (tmp / "loraops.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    return diff
