"""Compose adapters into one: blends of ΔW = scale · B @ A, written back as a normal LoRA adapter.

Methods (all weights wᵢ apply to each parent's ΔWᵢ):
  cat     exact: A = [A₁; A₂; …], B = [w₁s₁B₁, w₂s₂B₂, …]; rank Σrᵢ. No numerics at all.
  linear  exact: Σ wᵢΔWᵢ refactorised by SVD, dropping only numerically-zero directions (rank ≤ Σrᵢ).
  svd     Σ wᵢΔWᵢ truncated to `rank` singular directions; the discarded energy is reported.
  ties    TIES-merging (Yadav et al. 2023): trim each ΔWᵢ to its top-`density` magnitudes, elect a
          sign per entry by total mass, average the agreeing entries; then truncated SVD.
  dare    DARE (Yu et al. 2023): drop each entry with prob 1-`density`, rescale by 1/density, sum;
          then truncated SVD. Seeded.
Outputs have alpha = r (scale 1): the scales live in B. DoRA and modules_to_save cannot be blended.
A conv LoRA is blended flattened: ΔW as [out, in·kh·kw], the only form a conv LoRA can take (B is
1×1, so ΔW = B @ A over the flattened kernel). The SVD of that matrix gives A back as a kh×kw conv
into r channels and B as a 1×1 conv: the best rank-r conv LoRA of the blend, in PEFT's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraops.errors import AdapterMismatchError, ConfigError
from loraops.lora.adapter import Adapter, ModuleLoRA
from loraops.lora.config import config_for_modules, finite_number
from loraops.lora.merge import lora_delta

METHODS = ("linear", "cat", "svd", "ties", "dare")
MAX_WEIGHT = 100.0     # a weight beyond this is a typo, not a blend


@dataclass
class ComposeResult:
    adapter: Adapter
    discarded_energy: float  # Σ discarded σ² / Σ σ² over all modules (0 for exact methods)


def factorize(delta: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """ΔW [out, in] -> (A [r, in], B [out, r], discarded σ², total σ²) with B @ A the best rank-r
    approximation. rank=None keeps every direction above fp32 noise."""
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    if rank is None:
        rank = max(1, int((S > S[0] * 1e-7).sum().item())) if S.numel() and S[0] > 0 else 1
    rank = min(rank, S.numel())
    root = S[:rank].sqrt()
    A = (root[:, None] * Vh[:rank]).float()
    B = (U[:, :rank] * root[None, :]).float()
    return A, B, float((S[rank:] ** 2).sum()), float((S ** 2).sum())


def trim_top_magnitude(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest |value|, zero the rest."""
    k = int(density * t.numel())
    if k <= 0:
        return torch.zeros_like(t)
    mask = torch.zeros(t.numel(), dtype=torch.bool)
    mask[t.abs().reshape(-1).topk(k).indices] = True
    return t * mask.view_as(t)


def ties(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """deltas: n × [out, in] -> [out, in]. Trim, elect sign by total weighted mass, disjoint mean."""
    stacked = torch.stack([w * trim_top_magnitude(d, density) for d, w in zip(deltas, weights)])  # [n, out, in]
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (stacked.sign() == sign) & (stacked != 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def dare(deltas: list[torch.Tensor], weights: list[float], density: float, generator: torch.Generator) -> torch.Tensor:
    """deltas: n × [out, in] -> [out, in]. Random drop at rate 1-density, rescale, weighted sum."""
    out = torch.zeros_like(deltas[0])
    for d, w in zip(deltas, weights):
        keep = torch.rand(d.shape, generator=generator) < density
        out += w * d * keep / density
    return out


def _check_compatible(parents: list[Adapter]) -> None:
    if len(parents) < 2:
        raise ConfigError("compose needs at least two adapters")
    fps = {p.base_fingerprint for p in parents if p.base_fingerprint}
    if len(fps) > 1:
        raise AdapterMismatchError(f"adapters are bound to different bases: {', '.join(sorted(fps))}")
    targets = [set(p.modules) for p in parents]
    if any(t != targets[0] for t in targets):
        diff = sorted(targets[0].symmetric_difference(*targets[1:]))
        raise AdapterMismatchError(f"adapters adapt different modules (e.g. {diff[0]!r}); compose needs the same targets")
    for p in parents:
        if p.config.use_dora or any(m.magnitude is not None for m in p.modules.values()):
            raise AdapterMismatchError("DoRA adapters cannot be composed (their magnitudes do not add)")
        if p.saved_modules:
            raise AdapterMismatchError("adapters with modules_to_save cannot be composed")
    for path in parents[0].modules:
        shapes = {(p.modules[path].out_features, p.modules[path].in_features, p.modules[path].kernel_size)
                  for p in parents}
        if len(shapes) > 1:
            raise AdapterMismatchError(f"{path}: adapters disagree on the weight shape {sorted(shapes)}")


def _check_finite(path: str, t: torch.Tensor) -> None:
    """Weighted parents can overflow fp32 even when each is finite: refuse rather than write inf/NaN."""
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{path}: the composed weights overflow (non-finite values); use smaller weights")


def _parent_entry(ref: str, weight: float) -> dict:
    """Lineage record: a registry ref "name@3" gives name + version; a directory gives its name."""
    name, _, version = ref.rpartition("@") if "@" in ref else (ref, "", "")
    return {"ref": ref, "name": name.rstrip("/").rsplit("/", 1)[-1],
            "version": int(version) if version.isdigit() else None, "weight": weight}


def compose(parents: list[Adapter], weights: list[float], method: str, rank: int | None = None,
            density: float = 0.5, seed: int = 0, parent_refs: list[str] | None = None) -> ComposeResult:
    if method not in METHODS:
        raise ConfigError(f"unknown compose method {method!r}; choose one of {', '.join(METHODS)}")
    if len(weights) != len(parents):
        raise ConfigError("one weight per adapter")
    for w in weights:
        if not finite_number(w) or abs(w) > MAX_WEIGHT:
            raise ConfigError(f"composition weights must be finite numbers in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}], "
                              f"got {w!r}")
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    if rank is not None and rank <= 0:
        raise ConfigError(f"rank must be positive, got {rank}")
    _check_compatible(parents)
    target_rank = rank or max(m.r for p in parents for m in p.modules.values())
    generator = torch.Generator().manual_seed(seed)
    modules, discarded, total = {}, 0.0, 0.0
    for path in parents[0].modules:
        loras = [p.modules[path] for p in parents]
        if method == "cat":
            A = torch.cat([m.A.float() for m in loras])
            B = torch.cat([w * m.scale * m.B.float() for m, w in zip(loras, weights)], dim=1)
            _check_finite(path, B)
            modules[path] = ModuleLoRA(A, B, 1.0, kernel_size=loras[0].kernel_size)
            continue
        deltas = [lora_delta(m.A, m.B, m.scale) for m in loras]
        if method == "ties":
            blended = ties(deltas, weights, density)
        elif method == "dare":
            blended = dare(deltas, weights, density, generator)
        else:
            blended = sum(w * d for d, w in zip(deltas, weights))
        _check_finite(path, blended)
        A, B, lost, energy = factorize(blended, None if method == "linear" else target_rank)
        modules[path] = ModuleLoRA(A, B, 1.0, kernel_size=loras[0].kernel_size)
        discarded, total = discarded + lost, total + energy
    ranks = {p: m.r for p, m in modules.items()}
    first = parents[0].config
    config = config_for_modules(ranks, ranks, fan_in_fan_out=first.fan_in_fan_out,  # alpha = r: scale 1
                                task_type=first.task_type, base_model_name_or_path=first.base_model_name_or_path)
    refs = parent_refs or [str(i) for i in range(len(parents))]
    meta = {k: v for k, v in parents[0].meta.items() if k in ("base_fingerprint", "base_name")}
    meta["parents"] = [_parent_entry(ref, w) for ref, w in zip(refs, weights)]
    meta["composition"] = {"method": method, "rank": None if method in ("cat", "linear") else target_rank,
                           "density": density if method in ("ties", "dare") else None,
                           "seed": seed if method == "dare" else None,
                           "discarded_energy": discarded / total if total else 0.0}
    return ComposeResult(Adapter(config, modules, {}, meta), discarded / total if total else 0.0)
