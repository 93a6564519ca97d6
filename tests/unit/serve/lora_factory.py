"""Random adapters with non-trivial weights (B != 0) for serving tests."""

from __future__ import annotations

import torch

from loraops.lora import Adapter, LoRAConfig, ModuleLoRA, merge_state_dict, save_adapter, select_targets

TARGET_SETS = (["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
               ["gate_proj", "up_proj", "down_proj"], "all-linear")


def random_adapter(model, rank: int, targets, seed: int, std: float = 0.25, meta: dict | None = None) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    config = LoRAConfig(r=rank, alpha=2.0 * rank, target_modules=targets)
    modules = {}
    for path in select_targets(model, config):
        out_f, in_f = model.get_submodule(path).weight.shape
        modules[path] = ModuleLoRA(torch.randn(rank, in_f, generator=g) * std,
                                   torch.randn(out_f, rank, generator=g) * std, config.scale(rank, config.alpha))
    if config.target_modules == "all-linear":
        config.target_modules = sorted(modules)
    return Adapter(config, modules, {}, dict(meta or {}))


def save_random_adapters(model, out_dir, n: int, meta: dict | None = None) -> dict[str, str]:
    """n adapters of mixed ranks (2..16) and target sets, saved as name -> directory."""
    ranks = [2, 4, 8, 16, 3, 5, 12, 6]
    paths = {}
    for i in range(n):
        a = random_adapter(model, ranks[i % len(ranks)], TARGET_SETS[i % len(TARGET_SETS)], seed=100 + i, meta=meta)
        paths[f"ad{i}"] = str(save_adapter(a, out_dir / f"ad{i}"))
    return paths


def merged_model(builder, seed: int, adapter: Adapter | None):
    model = builder(seed)
    if adapter is not None:
        model.load_state_dict(merge_state_dict(model.state_dict(), adapter))
    return model
