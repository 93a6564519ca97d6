"""LoRAConfig: the typed, validated description of an adapter, and its PEFT JSON form."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

from loraops.errors import AdapterFormatError, ConfigError

ALL_LINEAR = "all-linear"


@dataclass
class LoRAConfig:
    """What to adapt and how. Field names follow PEFT's `LoraConfig` where they overlap.

    `target_modules` is a list of module-name suffixes, a regex string (full match on the module
    path), or "all-linear" (every Linear/Conv1D except the LM head and `modules_to_save`).
    `init` is "default" (PEFT's: kaiming-uniform A, zero B, so the adapter starts as a no-op),
    "gaussian" (A ~ N(0, 1/r), zero B) or "random" (non-zero B too; for tests only).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers_to_transform: list[int] | None = None
    layers_pattern: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False  # set by inject() for GPT-2 Conv1D targets, as PEFT does
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    init: str = "default"
    task_type: str | None = "CAUSAL_LM"
    base_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"rank must be a positive integer, got {self.r!r}")
        if not _positive_number(self.alpha):
            raise ConfigError(f"alpha must be a finite positive number, got {self.alpha!r}")
        if not (finite_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in ("default", "gaussian", "random"):
            raise ConfigError(f"init must be 'default', 'gaussian' or 'random', got {self.init!r}")
        if isinstance(self.target_modules, (list, tuple)):
            if not self.target_modules:
                raise ConfigError("target_modules is empty")
            self.target_modules = list(self.target_modules)
            if not all(isinstance(t, str) for t in self.target_modules):
                raise ConfigError("target_modules must be module-name strings")
        elif not isinstance(self.target_modules, str):
            raise ConfigError(f"target_modules must be a list of names or a regex string, got "
                              f"{type(self.target_modules).__name__}")
        for name in ("layers_pattern", "modules_to_save"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{name} must be a list of strings")
        layers = self.layers_to_transform
        if layers is not None and not (isinstance(layers, list) and all(_integer(i) and i >= 0 for i in layers)):
            raise ConfigError("layers_to_transform must be a list of layer indices")
        for key, rank in self.rank_pattern.items():
            if not isinstance(key, str) or not _integer(rank) or rank <= 0:
                raise ConfigError(f"rank_pattern[{key!r}] must be a positive integer, got {rank!r}")
        for key, alpha in self.alpha_pattern.items():
            if not isinstance(key, str) or not _positive_number(alpha):
                raise ConfigError(f"alpha_pattern[{key!r}] must be a finite positive number, got {alpha!r}")
        for name in ("use_rslora", "use_dora", "fan_in_fan_out"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)
        self.alpha_pattern = {k: float(v) for k, v in self.alpha_pattern.items()}

    def scale(self, r: int, alpha: float) -> float:
        """alpha/r, or alpha/sqrt(r) with rsLoRA (Kalajdzievski 2023)."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    # --- PEFT's adapter_config.json --------------------------------------------------------------

    def to_peft(self) -> dict:
        """The dict PEFT writes as adapter_config.json (only keys PEFT knows)."""
        target = self.target_modules
        return {
            "peft_type": "LORA",
            "task_type": self.task_type,
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": sorted(target) if isinstance(target, list) else target,
            "layers_to_transform": self.layers_to_transform,
            "layers_pattern": self.layers_pattern,
            "bias": "none",
            "fan_in_fan_out": self.fan_in_fan_out,
            "modules_to_save": self.modules_to_save,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "init_lora_weights": {"default": True, "gaussian": "gaussian", "random": False}[self.init],
            "inference_mode": True,
        }

    @classmethod
    def from_peft(cls, raw: dict) -> "LoRAConfig":
        """Read PEFT's adapter_config.json; refuse what we cannot reproduce exactly."""
        if raw.get("peft_type", "LORA") != "LORA":
            raise AdapterFormatError(f"not a LoRA adapter (peft_type={raw.get('peft_type')!r})")
        if raw.get("bias", "none") != "none":
            raise AdapterFormatError(f"bias={raw['bias']!r} adapters are not supported (only 'none')")
        for key in ("use_qalora", "lora_bias"):
            if raw.get(key):
                raise AdapterFormatError(f"adapter uses {key}, which loraops does not support")
        layers = raw.get("layers_to_transform")
        if isinstance(layers, int):
            layers = [layers]
        pattern = raw.get("layers_pattern")
        if isinstance(pattern, str):
            pattern = [pattern]
        init = raw.get("init_lora_weights", True)
        if "r" not in raw:
            raise AdapterFormatError("invalid adapter_config.json: no rank 'r'")
        try:
            return cls(
                r=raw["r"],
                alpha=raw.get("lora_alpha", raw["r"]),
                dropout=raw.get("lora_dropout", 0.0),
                target_modules=raw.get("target_modules") or [],
                layers_to_transform=layers,
                layers_pattern=pattern,
                use_rslora=raw.get("use_rslora", False),
                use_dora=raw.get("use_dora", False),
                fan_in_fan_out=raw.get("fan_in_fan_out", False),
                modules_to_save=raw.get("modules_to_save"),
                rank_pattern=_mapping(raw, "rank_pattern"),
                alpha_pattern=_mapping(raw, "alpha_pattern"),
                init="gaussian" if init == "gaussian" else ("random" if init is False else "default"),
                task_type=_optional_str(raw, "task_type"),
                base_model_name_or_path=_optional_str(raw, "base_model_name_or_path"),
            )
        except ConfigError as e:
            raise AdapterFormatError(f"invalid adapter_config.json: {e}") from e

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LoRAConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def config_for_modules(ranks: dict[str, int], alphas: dict[str, float], **fields) -> LoRAConfig:
    """A config for modules of mixed rank and alpha (module path -> value), as PEFT writes one: the
    most common rank and alpha as `r` and `alpha`, `rank_pattern`/`alpha_pattern` (full module paths)
    for the others, `target_modules` the sorted paths."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return LoRAConfig(r=r, alpha=alpha, target_modules=sorted(ranks),
                      rank_pattern={p: v for p, v in ranks.items() if v != r},
                      alpha_pattern={p: v for p, v in alphas.items() if v != alpha}, **fields)


def finite_number(x) -> bool:
    """A JSON number that is a real value: int or float, not bool, not NaN or infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive_number(x) -> bool:
    return finite_number(x) and x > 0


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _mapping(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be an object, got {type(value).__name__}")
    return dict(value)


def _optional_str(raw: dict, key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {type(value).__name__}")
    return value
