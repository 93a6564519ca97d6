"""TrainConfig: every knob of a training run, validated once here and trusted everywhere else."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from loraops.errors import ConfigError
from loraops.lora.config import ALL_LINEAR, LoRAConfig

PRECISIONS = ("fp32", "bf16")
TASKS = ("lm", "classification", "diffusion")
# What each task adapts when --targets is not given: LM and encoder every linear layer (attention
# and FFN; classification heads are never adapted, they are trained whole in modules_to_save);
# diffusion the UNet's attention projections, as diffusers' DreamBooth LoRA script does.
DEFAULT_TARGETS = {"lm": ALL_LINEAR, "classification": ALL_LINEAR, "diffusion": "to_q,to_k,to_v,to_out.0"}
QUANTIZATIONS = ("int8",)
MIN_SEQ_LEN = 8
_REGEX_CHARS = re.compile(r"[\\^$*+?()\[\]{}|]")


def _positive(name: str, value, number: bool = False) -> None:
    kinds = (int, float) if number else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ConfigError(f"{name} must be a positive {'number' if number else 'integer'}, got {value!r}")


@dataclass
class TrainConfig:
    """A LoRA fine-tuning run. `batch_size` counts packed rows per micro-batch (across all processes);
    one optimizer step consumes `batch_size * grad_accum` rows. `max_steps` (if set) overrides
    `epochs`. The adapter is written to `out/adapter`; checkpoints to `out/checkpoints`."""

    base: str
    data: str
    out: str
    task: str = "lm"  # "lm" | "classification" | "diffusion" (train/task.py)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | None = None  # "all-linear", "q_proj,v_proj", or a regex on module paths; None: DEFAULT_TARGETS
    use_dora: bool = False
    use_rslora: bool = False
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 1024
    lr: float = 2e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # <= 0: no clipping (the norm is still measured and logged)
    seed: int = 0
    precision: str = "fp32"
    grad_checkpointing: bool = False
    quantize: str | None = None  # "int8": frozen base linears in int8 (QLoRA-style); LoRA, embeddings, head fp32
    replay: int = 0  # general-text passages mixed into the training set against forgetting (data/replay.py)
    # An adapter directory to continue training: its config (rank, alpha, targets) and weights start
    # the run, so rank/alpha/targets/use_dora/use_rslora above are not used. Its base must be `base`.
    init_adapter: str | None = None
    save_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 100
    resume: bool = False
    max_bad_steps: int = 5
    val_fraction: float = 0.05  # only for a single JSONL file; a curated dir brings its own val.jsonl
    loss_chunk: int = 128  # positions per lm_head + cross-entropy chunk: [128, V] fp32 logits at a time (134 MB for Gemma)
    class_weights: str | None = None  # classification: "balanced" or "LABEL=W,..." (train/classify.py)
    resolution: int = 512  # diffusion: images are resized and center-cropped to this square
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.targets is None:
            self.targets = DEFAULT_TARGETS[self.task]
        if self.task != "lm" and (self.quantize or self.replay or self.precision != "fp32" or self.grad_checkpointing):
            raise ConfigError("--quantize, --replay, --precision bf16 and --grad-checkpointing are for the lm task only")
        if self.class_weights is not None and self.task != "classification":
            raise ConfigError("--class-weights is for --task classification")
        _positive("resolution", self.resolution)
        _positive("rank", self.rank)
        _positive("alpha", self.alpha, number=True)
        _positive("lr", self.lr, number=True)
        _positive("epochs", self.epochs)
        _positive("batch-size", self.batch_size)
        _positive("grad-accum", self.grad_accum)
        _positive("save-every", self.save_every)
        _positive("keep-checkpoints", self.keep_checkpoints)
        _positive("eval-every", self.eval_every)
        _positive("max-bad-steps", self.max_bad_steps)
        _positive("loss-chunk", self.loss_chunk)
        if not isinstance(self.replay, int) or self.replay < 0:
            raise ConfigError(f"replay must be an integer >= 0, got {self.replay!r}")
        if self.max_steps is not None:
            _positive("max-steps", self.max_steps)
        if not isinstance(self.seq_len, int) or self.seq_len < MIN_SEQ_LEN:
            raise ConfigError(f"seq-len must be an integer >= {MIN_SEQ_LEN}, got {self.seq_len!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("warmup-steps and weight-decay must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val-fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (or unset), got {self.quantize!r}")
        if not self.targets or not self.targets.strip():
            raise ConfigError("targets is empty")
        if _REGEX_CHARS.search(self.targets):
            try:
                re.compile(self.targets)
            except re.error as e:
                raise ConfigError(f"targets {self.targets!r} is not a valid regex: {e}") from None

    def lora_config(self) -> LoRAConfig:
        """The adapter this run trains. Targets: "all-linear", a regex (if it has regex characters),
        or a comma-separated list of module-name suffixes."""
        if self.targets == ALL_LINEAR or _REGEX_CHARS.search(self.targets):
            targets: list[str] | str = self.targets
        else:
            targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        return LoRAConfig(r=self.rank, alpha=self.alpha, dropout=self.dropout, target_modules=targets,
                          use_dora=self.use_dora, use_rslora=self.use_rslora, base_model_name_or_path=self.base)

    def to_dict(self) -> dict:
        return asdict(self)
