"""The training loop: `run(config)` loads the base and the data, `train(...)` is the algorithm.

One optimizer step = `grad_accum` micro-batches of `batch_size` items (split across processes):
packed rows for the LM task, examples or images for the others (task.py). Its loss is the summed
loss over the whole step divided by the step's weight (loss tokens, examples), which every process
knows in advance, so accumulation and data parallelism give exactly the gradient of one big batch.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

import loraops
from loraops.data.tokenize import IGNORE, PackedRow, pack, shared_prompt_prefix
from loraops.errors import ConfigError, TrainDataError, TrainingDivergedError
from loraops.lora import Adapter, LoRAConfig, apply_adapter, extract, inject, read_adapter, save_adapter
from loraops.models import LoadedBase, check_base, load_base
from loraops.models.quantize import quantize_int8_
from loraops.train import distributed
from loraops.data.replay import replay_records
from loraops.train.batches import Dataset, attention_mask_for, collate, encode_all, epoch_rows, load_dataset
from loraops.train.task import EpochPlan
from loraops.train.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from loraops.train.config import TrainConfig
from loraops.train.distributed import Dist
from loraops.train.loss import chunked_cross_entropy, select_loss_positions
from loraops.train.metrics import MetricsLog, progress_bar

# Fields that may differ between a run and its resumption (they do not change what is computed).
_RESUMABLE = {"resume", "progress", "save_every", "keep_checkpoints", "eval_every", "max_bad_steps"}


@dataclass
class TrainResult:
    adapter_dir: Path | None  # None on processes other than rank 0
    steps: int
    skipped_steps: int
    train_loss: float | None
    val_loss: float | None
    tokens: int  # units processed (all processes): non-pad tokens, or examples/images (`unit`)
    seconds: float
    tokens_per_s: float
    unit: str = "tokens"


def run(config: TrainConfig) -> TrainResult:
    """Train a LoRA adapter as `config` says; the CLI and the Python API both end up here."""
    d = distributed.init()
    try:
        data = _load_data(config)
        if d.is_main:  # rank 0 alone converts a base the cache lacks; the others wait for it
            try:
                base = _load_base(config, data)
            finally:
                distributed.barrier(d)
        else:
            distributed.barrier(d)
            base = _load_base(config, data)
        return train(base, data, config, d)
    finally:
        distributed.shutdown(d)


def _load_data(cfg: TrainConfig):
    if cfg.task == "diffusion":
        from loraops.train.diffusion import load_image_captions

        return load_image_captions(cfg.data, cfg.val_fraction, cfg.seed)
    return load_dataset(cfg.data, cfg.val_fraction, cfg.seed)


def _load_base(cfg: TrainConfig, data):
    if cfg.task == "classification":
        from loraops.train.classify import labels_of, load_classifier_base

        return load_classifier_base(cfg.base, labels_of(data), cfg.seed)
    if cfg.task == "diffusion":
        from loraops.models.diffusion import load_diffusion_base

        return load_diffusion_base(cfg.base, for_training=True)
    return load_base(cfg.base)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to 0 at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_seed(seed: int, step: int, rank: int) -> int:
    """Each (step, process) draws its dropout masks from its own seed: a resumed run cannot shift
    the random stream. With dropout, another process count draws other masks (each process masks
    only its own rows), so N processes match one only without dropout (docs/training.md)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:8], "little")


def loss_tokens(rows: list[PackedRow]) -> int:
    return sum(sum(label != IGNORE for label in r.labels[1:]) for r in rows)


def lm_loss(model, batch, cfg: TrainConfig) -> torch.Tensor:
    """Summed next-token loss of a batch, through the model body and the chunked LM head only."""
    body, head = model.base_model, model.get_output_embeddings()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else next(body.parameters()).dtype
    mask = attention_mask_for(model.config, batch.seq_ids, dtype, batch.prefix_ids, batch.position_ids)
    with torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext():
        hidden = body(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                      use_cache=False).last_hidden_state  # [B, T, H]
        h, targets = select_loss_positions(hidden, batch.labels)  # [N, H], [N]
        return chunked_cross_entropy(h, head.weight, targets, cfg.loss_chunk,
                                     getattr(model.config, "final_logit_softcapping", None))


def micro_batches(items: list, cfg: TrainConfig, d: Dist):
    """This process's share (items rank::world) of each micro-batch of the step."""
    for start in range(0, len(items), cfg.batch_size):
        mine = items[start:start + cfg.batch_size][d.rank::d.world]
        if mine:
            yield mine


@torch.no_grad()
def evaluate(model, task, cfg: TrainConfig, d: Dist) -> float | None:
    """Mean loss per unit of `task.weight` over the validation items (all processes together)."""
    if not task.val_items:
        return None
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)  # loss sum, weight
    for items in micro_batches(task.val_items, cfg, d):
        totals += torch.tensor([float(task.loss(model, items)[0]), task.weight(items)], dtype=torch.float64)
    model.train()
    distributed.all_reduce_sum_([totals], d)
    return float(totals[0] / totals[1]) if totals[1] > 0 else None


@dataclass
class Position:
    """Where a run is: the next step, the data position, and running totals. Saved in checkpoints."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    elapsed: float = 0.0  # seconds spent in training steps
    tokens: int = 0  # units trained on (non-pad tokens, examples, images), all processes
    bad_streak: int = 0  # non-finite steps in a row


def forward_backward(model, params: list[torch.Tensor], items: list, task, cfg: TrainConfig, d: Dist
                     ) -> tuple[float, list[int]]:
    """Gradient of the step's mean loss (summed loss / task.weight of the whole step), accumulated
    over this process's share of its micro-batches and summed over processes. Returns (step loss,
    units each process trained on), the same on every process."""
    n_loss = task.weight(items)
    totals = torch.zeros(1 + d.world, dtype=torch.float64)  # loss sum, then units of each rank
    for mine in micro_batches(items, cfg, d):
        loss, units = task.loss(model, mine)
        (loss / n_loss).backward()
        totals[0] += float(loss.detach())
        totals[1 + d.rank] += units
    distributed.all_reduce_sum_([p.grad for p in params] + [totals], d)
    return float(totals[0]) / n_loss, [int(t) for t in totals[1:]]


class LMTask:
    """Causal LM (task.py): examples packed into rows, loss on completion tokens (`lm_loss`)."""

    unit = "tokens"

    def __init__(self, base: LoadedBase, data: Dataset, cfg: TrainConfig):
        self.cfg, tokenizer = cfg, base.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Replay passages join the training set only: validation stays the task's own data.
        examples = encode_all(tokenizer, data.train + replay_records(cfg.replay, cfg.seed), cfg.seq_len)
        if not examples:
            raise TrainDataError(f"no training example in {cfg.data} has a token to learn from")
        self.val_items = pack(encode_all(tokenizer, data.val, cfg.seq_len), cfg.seq_len)
        shared_prefix = shared_prompt_prefix(examples)   # the task's fixed instruction, computed once a row
        self.plan = EpochPlan(lambda epoch: epoch_rows(examples, cfg.seq_len, cfg.seed, epoch, shared_prefix),
                              cfg.batch_size * cfg.grad_accum, cfg.epochs, cfg.max_steps)

    def lora_config(self) -> LoRAConfig:
        return self.cfg.lora_config()

    def prepare(self, model) -> None:
        if self.cfg.quantize == "int8":  # before inject: LoRA wraps the Int8Linears and stays fp32
            _quantize_base(model)

    def weight(self, rows: list[PackedRow]) -> int:
        return loss_tokens(rows)

    def loss(self, model, rows: list[PackedRow]) -> tuple[torch.Tensor, int]:
        batch = collate(rows, self.pad_id)
        return lm_loss(model, batch, self.cfg), batch.num_tokens

    def step_record(self, rows: list[PackedRow]) -> dict:
        return {"loss_tokens": loss_tokens(rows)}

    def meta(self) -> dict:
        return {}


def make_task(base, data, cfg: TrainConfig):
    if cfg.task == "classification":
        from loraops.train.classify import ClassifyTask

        return ClassifyTask(base, data, cfg)
    if cfg.task == "diffusion":
        from loraops.train.diffusion import DiffusionTask

        return DiffusionTask(base, data, cfg)
    return LMTask(base, data, cfg)


def train(base, data, cfg: TrainConfig, d: Dist = Dist(),
          on_eval: Callable[[int, float | None], None] | None = None) -> TrainResult:
    """The loop, for any task (task.py): `base` and `data` are what `run` loaded for it.
    `on_eval(steps_done, val_loss)` runs after each periodic validation (every eval_every steps,
    not after the last), with the model as trained so far; what it raises ends the run. The tuner
    scores and prunes trials there."""
    model, out = base.model, Path(cfg.out)
    task = make_task(base, data, cfg)
    plan, unit = task.plan, task.unit
    total_steps = plan.total_steps()

    task.prepare(model)
    torch.manual_seed(cfg.seed)  # the LoRA init
    lora_cfg = add_lora(base, cfg, task.lora_config())
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.grad_checkpointing:
        _enable_activation_checkpointing(model)
    model.train()
    pos, records = _restore(out, cfg, params, optimizer)
    metrics = MetricsLog(out / "metrics.jsonl", records, enabled=d.is_main)

    with progress_bar(cfg.progress and d.is_main) as bar:
        bar_task = bar.add_task("train", total=total_steps, completed=pos.step, loss="-", tps="-")
        while pos.step < total_steps:
            t0 = time.perf_counter()
            rows = plan.step_rows(pos.epoch, pos.batch_index)
            lr = lr_at(pos.step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(step_seed(cfg.seed, pos.step, d.rank))
            optimizer.zero_grad(set_to_none=False)
            loss, rank_units = forward_backward(model, list(params.values()), rows, task, cfg, d)
            step_tokens = sum(rank_units)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params.values(), max_norm))

            # update, unless the loss or the gradient is not finite
            if math.isfinite(loss) and math.isfinite(grad_norm):
                optimizer.step()
                pos.bad_streak = 0
            else:
                pos.bad_streak += 1
                metrics.log({"step": pos.step, "skipped": True, "loss": _json_float(loss),
                             "grad_norm": _json_float(grad_norm), "reason": "non-finite loss or gradient"})
                if pos.bad_streak >= cfg.max_bad_steps:
                    raise _diverged(out, pos)
            dt = time.perf_counter() - t0
            pos.elapsed += dt
            pos.tokens += step_tokens
            if pos.bad_streak == 0:
                metrics.log({"step": pos.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, unit: pos.tokens,
                             **task.step_record(rows),
                             f"{unit}_per_s": step_tokens / dt, "elapsed": pos.elapsed, "epoch": pos.epoch,
                             "world_size": d.world, f"rank_{unit}": rank_units})
                bar.update(bar_task, loss=f"{loss:.4f}", tps=f"{step_tokens / dt:,.0f}")
            pos.step += 1
            pos.epoch, pos.batch_index = plan.advance(pos.epoch, pos.batch_index)
            bar.update(bar_task, completed=pos.step)

            if pos.step % cfg.eval_every == 0 and pos.step < total_steps:
                val = evaluate(model, task, cfg, d)
                if val is not None:
                    metrics.log({"step": pos.step - 1, "val_loss": val})
                if on_eval is not None:
                    on_eval(pos.step, val)
            if pos.step % cfg.save_every == 0 and pos.step < total_steps and d.is_main:
                state = {"position": asdict(pos), "data_seed": cfg.seed, "optimizer": optimizer.state_dict(),
                         "schedule": {"kind": "warmup-cosine", "step": pos.step, "total_steps": total_steps},
                         "rng": rng_state(), "metrics": metrics.records, "config": cfg.to_dict()}
                save_checkpoint(out, pos.step, params, state, cfg.keep_checkpoints)

    val_loss = evaluate(model, task, cfg, d)
    if val_loss is not None:
        metrics.log({"step": pos.step - 1, "val_loss": val_loss})
    result = TrainResult(None, pos.step, sum(1 for r in metrics.records if r.get("skipped")), metrics.last("loss"),
                         val_loss, pos.tokens, pos.elapsed, pos.tokens / pos.elapsed if pos.elapsed else 0.0, unit)
    if d.is_main:
        meta = {**_meta(base, data, cfg, result), **task.meta()}
        result.adapter_dir = save_adapter(extract(model, lora_cfg, meta), out / "adapter")
    distributed.barrier(d)
    return result


def add_lora(base: LoadedBase, cfg: TrainConfig, fresh: LoRAConfig | None = None) -> LoRAConfig:
    """Put the run's LoRA into the base model: fresh (`fresh`, by default cfg.lora_config()), or the
    weights and config of cfg.init_adapter to continue from. -> the config that describes what was injected."""
    if cfg.init_adapter is None:
        lora_cfg = fresh if fresh is not None else cfg.lora_config()
        inject(base.model, lora_cfg)
        return lora_cfg
    parent = read_adapter(cfg.init_adapter)
    check_base(parent, base.info.name, base.info.fingerprint)
    parent.config.dropout = cfg.dropout
    apply_adapter(base.model, parent)
    return parent.config


def checkpoint_adapters(base: LoadedBase, cfg: TrainConfig, checkpoints: list[Path], meta: dict) -> list[Adapter]:
    """The adapter as it stood at each of `checkpoints` (step-N directories of the run `cfg` describes),
    built on `base`, a freshly loaded base that this modifies (the run's LoRA is injected into it).
    Each gets `meta` plus its step as metrics["checkpoint_step"]."""
    lora_cfg = add_lora(base, cfg)
    params = {name: p for name, p in base.model.named_parameters() if p.requires_grad}
    adapters = []
    for checkpoint in checkpoints:
        weights, state = load_checkpoint(checkpoint)
        _check_same_run(state["config"], cfg)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])
        step = state["position"]["step"]
        adapters.append(extract(base.model, lora_cfg, {**meta, "metrics": {**meta.get("metrics", {}),
                                                                            "checkpoint_step": step}}))
    return adapters


def _restore(out: Path, cfg: TrainConfig, params: dict[str, torch.Tensor], optimizer) -> tuple[Position, list[dict]]:
    """With --resume, load the newest checkpoint into params and optimizer; a fresh run refuses a
    directory that already holds one (it would mix two runs' checkpoints and metrics)."""
    checkpoints = list_checkpoints(out)
    if checkpoints and not cfg.resume:
        raise ConfigError(f"{out} already holds checkpoints of a run: pass --resume to continue it, "
                          "or choose another --out")
    if not checkpoints:
        return Position(), []
    weights, state = load_checkpoint(checkpoints[-1])
    _check_same_run(state["config"], cfg)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return Position(**state["position"]), state["metrics"]


def _quantize_base(model) -> list[str]:
    """QLoRA-style: every nn.Linear of the frozen body becomes a weight-only Int8Linear: int8 weights,
    fp32 activations times the weight dequantized on the fly, forward and backward (the input
    gradient, which LoRA in earlier layers needs). Not the W8A8 kernel serving uses for the LM
    head: its 7-bit activations (one scale per call) raised Gemma 3 270M's val loss from 1.08 to
    1.49; weight-only int8 gives 1.08.

    The LM head and the embeddings stay fp32, as in QLoRA: in Gemma the head *is* the embedding
    matrix (tied, 262k x 640), which the lookup needs in full precision anyway, so an int8 head
    would add a copy instead of saving memory; and the chunked loss multiplies by the head's
    weight per chunk, which an int8 head could only give back by dequantizing all of it each time.
    The adapter is bound to the fp32 base: `base.info` (fingerprint) is untouched."""
    return quantize_int8_(model, include_lm_head=False, weight_only=True)


def _enable_activation_checkpointing(model) -> None:
    # non-reentrant: works although the frozen embeddings' output does not require grad
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _diverged(out: Path, pos: Position) -> TrainingDivergedError:
    kept = list_checkpoints(out)
    return TrainingDivergedError(
        f"{pos.bad_streak} non-finite steps in a row (steps {pos.step - pos.bad_streak + 1}..{pos.step}); "
        "stopping. " + (f"Last good checkpoint: {kept[-1]}" if kept else "No checkpoint was written yet."))


def _meta(base, data, cfg: TrainConfig, r: TrainResult) -> dict:
    return {"base_fingerprint": base.info.fingerprint, "base_name": base.info.name, "base_source": cfg.base,
            "dataset_digest": data.digest, "hyperparameters": cfg.to_dict(),
            "metrics": {"train_loss": r.train_loss, "val_loss": r.val_loss, r.unit: r.tokens,
                        "seconds": round(r.seconds, 3), f"{r.unit}_per_s": round(r.tokens_per_s, 1),
                        "steps": r.steps, "skipped_steps": r.skipped_steps},
            "loraops_version": loraops.__version__, "created_by": "loraops train"}


def _check_same_run(saved: dict, cfg: TrainConfig) -> None:
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in _RESUMABLE and saved.get(k) != now[k])
    if changed:
        raise ConfigError("--resume with different settings than the checkpointed run: "
                          + ", ".join(f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in changed))


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # JSON has no NaN/inf literals
