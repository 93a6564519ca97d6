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


def random_classifier(model, rank: int, targets, labels: list[str] | None, seed: int, scale: float = 1.0,
                      saves=("classifier", "bert.pooler.dense")) -> Adapter:
    """A SEQ_CLS adapter for a (tiny) BERT: random LoRA on `targets` (weights times `scale`), and a
    random head with len(labels) outputs (2 when labels is None: no loraops.json labels) and
    pooler in modules_to_save."""
    config = LoRAConfig(r=rank, alpha=2.0 * rank, target_modules=targets, modules_to_save=list(saves),
                        task_type="SEQ_CLS")
    adapter = random_adapter(model, rank, targets, seed)
    for m in adapter.modules.values():
        m.A.mul_(scale)
        m.B.mul_(scale)
    g = torch.Generator().manual_seed(seed + 1000)
    hidden, k = model.config.hidden_size, len(labels) if labels else 2
    shapes = {"classifier.weight": (k, hidden), "classifier.bias": (k,),
              "bert.pooler.dense.weight": (hidden, hidden), "bert.pooler.dense.bias": (hidden,)}
    saved = {key: torch.randn(*shape, generator=g) * 0.5 for key, shape in shapes.items()
             if any(key.startswith(s + ".") for s in saves)}
    return Adapter(config, adapter.modules, saved, {"labels": labels} if labels else {})


SENTIMENT = ["neg", "neutral", "pos"]


def save_classifiers(model, out_dir, meta: dict | None = None) -> dict:
    """name -> directory of three SEQ_CLS adapters for `model` (a tiny BERT): sentiment (3 labels
    in loraops.json, LoRA on query/value, `meta` added), spam (as PEFT would write it: no
    loraops.json, so LABEL_0/1; other targets and rank) and overflow (finite weights that overflow
    to inf in the forward)."""
    sentiment = random_classifier(model, 4, ["query", "value"], SENTIMENT, seed=1)
    sentiment.meta.update(meta or {})
    spam = random_classifier(model, 2, ["key", "intermediate.dense"], None, seed=2)
    overflow = random_classifier(model, 4, ["query", "value"], SENTIMENT, seed=3, scale=1e20)
    return {name: save_adapter(a, out_dir / name) for name, a in
            [("sentiment", sentiment), ("spam", spam), ("overflow", overflow)]}
