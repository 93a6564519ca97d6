"""What `loraops tune` searches: the recipe space, and the training run one trial's recipe makes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from loraops.errors import ConfigError
from loraops.lora.config import ALL_LINEAR
from loraops.train import TrainConfig

# Named target sets (module names of Llama/Gemma/Mistral-style decoders).
TARGET_SETS = {"qv": "q_proj,v_proj", "attention": "q_proj,k_proj,v_proj,o_proj",
               "mlp": "gate_proj,up_proj,down_proj", "all-linear": ALL_LINEAR}


@dataclass(frozen=True)
class Recipe:
    """One trial's choices. `replay` is general-text passages per training example (0.5: half as
    many passages as examples)."""

    rank: int
    targets: str  # a key of TARGET_SETS
    lr: float
    steps: int
    replay: float

    def train_config(self, base: str, data: str, out: str, train_examples: int, *, batch_size: int, seq_len: int,
                     eval_every: int, seed: int, resume: bool, progress: bool) -> TrainConfig:
        """The run: alpha = 2·rank, a short warmup, the cosine schedule over `steps`, a checkpoint at
        every scoring point (so an interrupted trial resumes from its last one)."""
        return TrainConfig(base=base, data=data, out=out, rank=self.rank, alpha=2.0 * self.rank,
                           targets=TARGET_SETS[self.targets], max_steps=self.steps, batch_size=batch_size,
                           seq_len=seq_len, lr=self.lr, warmup_steps=min(5, self.steps // 5),
                           replay=round(self.replay * train_examples), save_every=eval_every, keep_checkpoints=1,
                           eval_every=eval_every, seed=seed, resume=resume, progress=progress)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    """Choices for rank and targets; (low, high) ranges for lr (searched on a log scale), steps and
    replay. A range with low == high fixes that knob."""

    ranks: tuple[int, ...] = (4, 8, 16)
    targets: tuple[str, ...] = ("attention", "all-linear")
    lr: tuple[float, float] = (1e-4, 3e-3)
    steps: tuple[int, int] = (24, 96)
    replay: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not self.ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.ranks):
            raise ConfigError(f"ranks must be positive integers, got {self.ranks!r}")
        unknown = [t for t in self.targets if t not in TARGET_SETS]
        if not self.targets or unknown:
            raise ConfigError(f"targets must be among {', '.join(TARGET_SETS)}, got {', '.join(self.targets) or 'none'}")
        for name, (low, high), least in (("lr", self.lr, 1e-12), ("steps", self.steps, 1), ("replay", self.replay, 0)):
            if not least <= low <= high:
                raise ConfigError(f"{name} range must be LOW:HIGH with {least} <= LOW <= HIGH, got {low}:{high}")
        if not all(isinstance(s, int) for s in self.steps):
            raise ConfigError(f"steps range must be integers, got {self.steps!r}")

    def suggest(self, trial) -> Recipe:
        """Draw (or, for a trial enqueued with fixed parameters, read) a recipe from an Optuna trial."""
        return Recipe(rank=trial.suggest_categorical("rank", list(self.ranks)),
                      targets=trial.suggest_categorical("targets", list(self.targets)),
                      lr=trial.suggest_float("lr", *self.lr, log=True),
                      steps=trial.suggest_int("steps", *self.steps),
                      replay=trial.suggest_float("replay", *self.replay))

    def check(self, recipe: Recipe) -> None:
        """ConfigError unless `recipe` lies in this space."""
        inside = (recipe.rank in self.ranks and recipe.targets in self.targets
                  and all(low <= getattr(recipe, k) <= high for k, (low, high) in
                          (("lr", self.lr), ("steps", self.steps), ("replay", self.replay))))
        if not inside:
            raise ConfigError(f"recipe {recipe.to_dict()} lies outside the search space {self.to_dict()}")

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}


def parse_recipe(text: str) -> Recipe:
    """"rank=8,targets=qv,lr=3e-4,steps=32,replay=0.5" -> Recipe."""
    kinds = {"rank": int, "targets": str, "lr": float, "steps": int, "replay": float}
    try:
        fields = dict(part.split("=", 1) for part in text.split(",") if part.strip())
        values = {k.strip(): kinds[k.strip()](v.strip()) for k, v in fields.items()}
        return Recipe(**values)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"--try must be rank=R,targets=T,lr=LR,steps=S,replay=X (all five), got {text!r}") from None


def parse_choices(text: str, kind: type, name: str) -> tuple:
    """"4,8,16" -> (4, 8, 16)."""
    try:
        values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values


def parse_range(text: str, kind: type, name: str) -> tuple:
    """"1e-4:3e-3" -> (1e-4, 3e-3); a single value "40" fixes the knob: (40, 40)."""
    parts = text.split(":")
    try:
        values = tuple(kind(p.strip()) for p in parts)
    except ValueError:
        raise ConfigError(f"--{name} must be LOW:HIGH or one value, got {text!r}") from None
    if len(values) not in (1, 2):
        raise ConfigError(f"--{name} must be LOW:HIGH or one value, got {text!r}")
    return (values[0], values[-1])
