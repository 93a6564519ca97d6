"""Shared by the registry tests (a module of its own: `conftest` is an ambiguous import name)."""

from pathlib import Path

from tiny import tiny_llama

from loraops.lora import LoRAConfig, extract, inject, save_adapter

FINGERPRINT = "sha256:" + "ab" * 32


def make_adapter(out: Path, seed: int = 0, **meta) -> Path:
    """A tiny random LoRA adapter bound to FINGERPRINT (override or drop keys through `meta`)."""
    model = tiny_llama(seed)
    cfg = LoRAConfig(r=4, target_modules=["q_proj", "v_proj"], init="random")
    inject(model, cfg)
    meta = {"base_fingerprint": FINGERPRINT, "base_name": "tiny", **meta}
    save_adapter(extract(model, cfg, meta={k: v for k, v in meta.items() if v is not None}), out)
    return out
