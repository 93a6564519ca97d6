"""The `loraops` command: a thin Typer layer over the package's Python API.

Each command calls one importable function; errors of type LoraOpsError print as one line on
stderr with a non-zero exit code and no traceback. Heavy imports happen inside commands so that
`loraops --help` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from loraops.errors import LoraOpsError

app = typer.Typer(help="loraops: curate, train, evaluate, register and serve LoRA adapters on one base model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
base_app = typer.Typer(help="Base models: pull the default, inspect fingerprints.", no_args_is_help=True)
data_app = typer.Typer(help="Data curation.", no_args_is_help=True)
registry_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)
app.add_typer(base_app, name="base")
app.add_typer(data_app, name="data")
app.add_typer(registry_app, name="registry")

console = Console(stderr=True)
out = Console()


# ---- base ------------------------------------------------------------------------------------


@base_app.command("pull")
def base_pull(name: str = typer.Argument("gemma-3-270m", help="A known base name.")) -> None:
    """Fetch and convert a known base model into the cache (LORAOPS_HOME/models)."""
    from loraops.models import resolve_base

    info = resolve_base(name, progress=True)
    out.print(f"[green]ready[/] {info.name} at {info.path}\nfingerprint {info.fingerprint}")


@base_app.command("info")
def base_info(base: str = typer.Argument("gemma-3-270m", help="Known name, HF model dir or .gguf file.")) -> None:
    """Print where a base lives and its fingerprint."""
    from loraops.models import resolve_base

    info = resolve_base(base, progress=True)
    out.print_json(data={"name": info.name, "path": str(info.path), "fingerprint": info.fingerprint})


# ---- data ------------------------------------------------------------------------------------


@data_app.command("curate")
def data_curate(
    in_path: Path = typer.Argument(..., help="Input JSONL: prompt/completion, chat or text lines."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for train.jsonl, val.jsonl and report.json."),
    strict: bool = typer.Option(False, help="Fail on the first malformed line instead of skipping it."),
    near_dup_threshold: float = typer.Option(0.85, help="Jaccard similarity that makes a near duplicate."),
    near_dedup: bool = typer.Option(True, help="Drop near duplicates (MinHash LSH)."),
    pii: bool = typer.Option(True, help="Replace e-mails, phones, cards, IBANs, IPs, SSNs by placeholders."),
    val_fraction: float = typer.Option(0.1, help="Share of records in val.jsonl."),
    seed: int = typer.Option(0, help="Seed of the train/val split."),
    base: Optional[str] = typer.Option(None, help="Base whose chat template renders chat data: known name, "
                                                  "HF model dir or .gguf file."),
) -> None:
    """Normalise, scrub, filter, deduplicate and split a JSONL file; print what each step did."""
    from loraops.data import CurateOptions, curate
    from loraops.data.report import summary_table
    from loraops.errors import ModelNotFoundError

    tokenizer = None
    if base is not None:
        from transformers import AutoTokenizer

        path = Path(base).expanduser()
        if not path.is_dir():  # a known name or .gguf: only its converted directory holds a tokenizer
            from loraops.models import resolve_base

            path = resolve_base(base, progress=True).path
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"no tokenizer in {path}: {str(e).splitlines()[0]}") from None
    options = CurateOptions(strict=strict, near_dedup=near_dedup, near_dup_threshold=near_dup_threshold,
                            pii=pii, val_fraction=val_fraction, seed=seed)
    report = curate(in_path, out_dir, options, tokenizer=tokenizer)
    out.print(summary_table(report))


# ---- train -----------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    base: str = typer.Option("gemma-3-270m", help="Known name, HF model dir or .gguf file; for --task "
                                                  "classification an encoder dir (BERT/RoBERTa/DeBERTa), for "
                                                  "--task diffusion a diffusers pipeline dir."),
    data: Path = typer.Option(..., help="Curated dir (train.jsonl, val.jsonl) or one .jsonl file; for --task "
                                        "diffusion a folder of images with captions."),
    out_dir: Path = typer.Option(..., "--out", help="Run dir: adapter/, checkpoints/, metrics.jsonl."),
    task: str = typer.Option("lm", help="lm (prompt/completion or text) | classification ({\"text\", \"label\"}) "
                                        "| diffusion (images + captions, ε-prediction)."),
    rank: int = typer.Option(8, help="LoRA rank r."),
    alpha: float = typer.Option(16.0, help="LoRA alpha (scale = alpha/r, or alpha/sqrt(r) with --use-rslora)."),
    dropout: float = typer.Option(0.0, help="Dropout on the LoRA input."),
    targets: Optional[str] = typer.Option(None, help="all-linear, a comma list (q_proj,v_proj) or a regex. Default: "
                                                     "all-linear; for diffusion to_q,to_k,to_v,to_out.0 (add "
                                                     "conv1,conv2 for conv LoRA, q_proj,v_proj for the text "
                                                     "encoder)."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (overrides --epochs)."),
    epochs: int = typer.Option(1, help="Passes over the training data."),
    batch_size: int = typer.Option(8, help="Packed rows per micro-batch (all processes together)."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    seq_len: int = typer.Option(1024, help="Tokens per packed row."),
    lr: float = typer.Option(2e-4, help="Peak learning rate."),
    warmup_steps: int = typer.Option(10, help="Linear warmup steps before the cosine decay."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping norm (<= 0: no clipping)."),
    seed: int = typer.Option(0, help="Seed for the LoRA init, data order, dropout and the val split."),
    precision: str = typer.Option("fp32", help="fp32 | bf16 (autocast)."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in backward."),
    quantize: Optional[str] = typer.Option(None, "--quantize",
                                           help="int8: train over a frozen int8 base (QLoRA-style; LoRA, embeddings "
                                                "and LM head stay fp32). The adapter is for the fp32 base."),
    replay: int = typer.Option(0, help="General-text passages (stdlib docstrings) mixed into the training set "
                                       "to limit forgetting; 0: none."),
    save_every: int = typer.Option(100, help="Checkpoint every N steps."),
    keep_checkpoints: int = typer.Option(2, help="Checkpoints kept (newest)."),
    eval_every: int = typer.Option(100, help="Validation loss every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    max_bad_steps: int = typer.Option(5, help="Stop after N non-finite steps in a row."),
    use_dora: bool = typer.Option(False, "--use-dora", help="DoRA (weight-decomposed LoRA)."),
    use_rslora: bool = typer.Option(False, "--use-rslora", help="Rank-stabilised scale alpha/sqrt(r)."),
    val_fraction: float = typer.Option(0.05, help="Val share split off a single .jsonl file (or image folder)."),
    class_weights: Optional[str] = typer.Option(None, help="Classification: 'balanced' or LABEL=WEIGHT,... "
                                                           "(loss weights; default all 1)."),
    resolution: int = typer.Option(512, help="Diffusion: images are resized and center-cropped to this square."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Train a LoRA adapter (resumable; torchrun for several processes): a causal LM (completion-only loss,
    packed rows), an encoder classifier, or a Stable Diffusion UNet (and text encoder)."""
    from loraops.train import TrainConfig, run

    cfg = TrainConfig(base=base, data=str(data), out=str(out_dir), task=task, rank=rank, alpha=alpha, dropout=dropout,
                      targets=targets, use_dora=use_dora, use_rslora=use_rslora, max_steps=max_steps,
                      epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, seq_len=seq_len, lr=lr,
                      warmup_steps=warmup_steps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                      seed=seed, precision=precision, grad_checkpointing=grad_checkpointing, quantize=quantize, replay=replay,
                      save_every=save_every, keep_checkpoints=keep_checkpoints, eval_every=eval_every,
                      resume=resume, max_bad_steps=max_bad_steps, val_fraction=val_fraction,
                      class_weights=class_weights, resolution=resolution, progress=progress)
    result = run(cfg)
    if result.adapter_dir is not None:
        train_loss, val = (f"{x:.4f}" if x is not None else "-" for x in (result.train_loss, result.val_loss))
        out.print(f"[green]trained[/] {result.steps} steps -> {result.adapter_dir}\n"
                  f"train loss {train_loss}, val loss {val}, {result.tokens:,} {result.unit}, "
                  f"{result.tokens_per_s:,.1f} {result.unit}/s, {result.skipped_steps} skipped steps")


# ---- tune ------------------------------------------------------------------------------------


@app.command("tune")
def tune_cmd(
    base: str = typer.Option("gemma-3-270m", help="Known name, HF model dir or .gguf file."),
    data: Path = typer.Option(..., help="Curated dir (train.jsonl + val.jsonl); trials are scored on val.jsonl."),
    out_dir: Path = typer.Option(..., "--out", help="Study dir: study.db (resumable) and trials/NNNN/ runs."),
    name: str = typer.Option(..., help="Registry adapter name: each finished trial becomes a version of it."),
    tenant: Optional[str] = typer.Option(None, help="Tenant owning the adapter."),
    trials: int = typer.Option(12, help="Trials in the study (finished ones count across resumed runs)."),
    timeout: Optional[float] = typer.Option(None, help="Minutes: no trial starts after this (the running one ends)."),
    ranks: str = typer.Option("4,8,16", help="LoRA ranks to try."),
    targets: str = typer.Option("attention,all-linear", help="Target sets to try: qv, attention, mlp, all-linear."),
    lr: str = typer.Option("1e-4:3e-3", help="Learning-rate range LOW:HIGH (log scale)."),
    steps: str = typer.Option("24:96", help="Optimizer-step range LOW:HIGH."),
    replay: str = typer.Option("0:1", help="Replay range LOW:HIGH: general passages per training example."),
    rung_steps: Optional[int] = typer.Option(None, help="Score (and maybe prune) trials every N steps "
                                                        "(default: a third of the smallest step count)."),
    reduction_factor: int = typer.Option(3, help="Successive halving: keep the best 1/N at each rung."),
    batch_size: int = typer.Option(2, help="Packed rows per step."),
    seq_len: int = typer.Option(512, help="Tokens per packed row."),
    eval_examples: int = typer.Option(48, help="Val examples each score is measured on."),
    max_forgetting: float = typer.Option(0.10, help="Forgetting bound (the gate's); beyond it the score drops."),
    seed: int = typer.Option(0, help="Seed of the sampler and of every trial's run."),
    first: list[str] = typer.Option([], "--try", help="A recipe to try first, e.g. the one in use: "
                                                        "rank=8,targets=qv,lr=3e-4,steps=32,replay=0.5 (repeatable)."),
    progress: bool = typer.Option(True, help="Show each trial's progress bar."),
) -> None:
    """Search LoRA recipes on a task: train, score (domain metric, forgetting), prune by successive halving."""
    from loraops.extras import require

    require("loraops tune", "tune", "registry", install="tune,registry")
    from loraops.tune import SearchSpace, TuneConfig, tune
    from loraops.tune.space import parse_choices, parse_range, parse_recipe

    space = SearchSpace(ranks=parse_choices(ranks, int, "ranks"), targets=parse_choices(targets, str, "targets"),
                        lr=parse_range(lr, float, "lr"), steps=parse_range(steps, int, "steps"),
                        replay=parse_range(replay, float, "replay"))
    result = tune(TuneConfig(base=base, data=str(data), out=str(out_dir), name=name, tenant=tenant, space=space,
                             trials=trials, timeout_minutes=timeout, rung_steps=rung_steps,
                             reduction_factor=reduction_factor, batch_size=batch_size, seq_len=seq_len,
                             eval_examples=eval_examples, max_forgetting=max_forgetting, seed=seed,
                             first=tuple(parse_recipe(r) for r in first), progress=progress))
    if result.best is None:
        out.print("[yellow]no trial finished yet[/]: run the same command again to continue the study")
        return
    b = result.best
    out.print(f"[green]best[/] trial {b.number}: {name}@{b.version}, {b.scores.metric} {b.scores.domain:.3f}, "
              f"forgetting {b.scores.forgetting:.3f}, score {b.scores.score:.3f}\n"
              f"next: loraops eval --adapter {name}@{b.version} --data {data}, then "
              f"loraops registry promote {name} {b.version}")


# ---- eval ------------------------------------------------------------------------------------


@app.command("eval")
def eval_cmd(
    adapter: str = typer.Option(..., help="Adapter directory, or NAME, NAME@VERSION or NAME@STAGE from the "
                                          "registry."),
    base: str = typer.Option("gemma-3-270m", help="Known name, HF model dir or .gguf file."),
    data: Optional[Path] = typer.Option(None, help="Curated dir (its val.jsonl) or a .jsonl file of "
                                                   "prompt/completion or chat lines ({\"text\", \"label\"} for a "
                                                   "classification adapter). Without it: general only."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    max_examples: int = typer.Option(200, help="Evaluate the first N validation examples."),
    batch_size: int = typer.Option(8, help="Sequences per generation/scoring batch."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Generation length (default: longest reference + 8)."),
    force: bool = typer.Option(False, help="Evaluate even if the adapter is bound to a different base."),
    progress: bool = typer.Option(True, help="Show the progress bar (stderr)."),
) -> None:
    """Domain metrics and forgetting vs the base, side by side; stored on the registry version or in
    ADAPTER_DIR/eval.json."""
    import json

    from loraops.evals import EvalConfig, evaluate_ref
    from loraops.evals.table import summary_table

    config = EvalConfig(data=data, max_examples=max_examples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                        force=force, progress=progress)
    report, stored = evaluate_ref(base, adapter, config)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return
    out.print(summary_table(report))
    out.print(f"stored in {stored}")


def _adapter_source(ref: str) -> tuple[Path, str]:
    """ADAPTER (contract): a directory, or NAME[@VERSION|@STAGE] fetched (verified) from the registry.
    -> (directory, label), the label naming the concrete version ("name@3") for lineage."""
    path = Path(ref)
    if path.exists() or "/" in ref or ref.startswith("."):
        return path, ref
    from loraops.registry import Registry

    with Registry() as reg:
        return reg.fetch(ref), reg.resolve(ref).ref


# ---- merge -----------------------------------------------------------------------------------


@app.command("merge")
def merge_cmd(
    adapter: str = typer.Option(..., help="Adapter directory (PEFT format)."),
    out_dir: Path = typer.Option(..., "--out", help="Where to write the merged HF model directory."),
    base: str = typer.Option("gemma-3-270m", help="Known name, HF model dir or .gguf file."),
    tolerance: float = typer.Option(1e-3, help="Max abs logit difference allowed between merged and unmerged."),
    force: bool = typer.Option(False, help="Load even if the adapter is bound to a different base."),
) -> None:
    """Fold an adapter into its base and write a plain transformers model directory (for a diffusers
    pipeline base: a whole pipeline directory with the merged UNet/text encoder)."""
    from loraops.models.merge_model import merge_to_dir

    report = merge_to_dir(base, _adapter_source(adapter)[0], out_dir, tolerance=tolerance, force=force)
    out.print(f"[green]merged[/] {adapter} into {report.base_name} -> {out_dir}\n"
              f"max |logits merged - unmerged| = {report.max_abs_diff:.3e} (tolerance {tolerance:g})")


# ---- convert ---------------------------------------------------------------------------------


@app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="A Stable Diffusion LoRA: loraops/PEFT directory, diffusers "
                                         "pytorch_lora_weights.safetensors (or its directory), or a kohya/A1111 "
                                         ".safetensors file."),
    base: str = typer.Option(..., help="The diffusers pipeline directory it is for (names are resolved and "
                                       "the fit is checked against it)."),
    out_path: Path = typer.Option(..., "--out", help="Directory (peft, diffusers) or .safetensors file (kohya)."),
    to: str = typer.Option("peft", help="peft (a loraops adapter directory) | diffusers | kohya"),
    force: bool = typer.Option(False, help="Convert even if the adapter is bound to a different base."),
) -> None:
    """Convert a diffusion LoRA between the loraops/PEFT, diffusers and kohya formats (pickle refused)."""
    from loraops.lora.convert import write
    from loraops.models.diffusion import import_adapter

    adapter = import_adapter(src, base, force=force)
    write(adapter, out_path, to)
    convs = sum(1 for m in adapter.modules.values() if m.kernel_size)
    out.print(f"[green]converted[/] {src} -> {out_path} ({to}; {len(adapter.modules)} modules, {convs} convs)")


# ---- compose ---------------------------------------------------------------------------------


def _ref_and_weight(spec: str) -> tuple[str, float]:
    """"DIR_OR_REF[:weight]"; a trailing ":<number>" is the weight (paths may contain ':')."""
    ref, sep, weight = spec.rpartition(":")
    if sep:
        try:
            return ref, float(weight)
        except ValueError:
            pass
    return spec, 1.0


@app.command("compose")
def compose_cmd(
    adapter: list[str] = typer.Option(..., help="ADAPTER[:weight], repeated (two or more)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the composed adapter."),
    method: str = typer.Option("linear", help="linear | cat | svd | ties | dare"),
    rank: Optional[int] = typer.Option(None, help="Target rank for svd/ties/dare (default: the largest parent rank)."),
    density: float = typer.Option(0.5, help="Fraction of entries kept by ties/dare."),
    seed: int = typer.Option(0, help="Seed for dare's random drop."),
) -> None:
    """Blend adapters into a new adapter (PEFT format) whose loraops.json records its parents."""
    from loraops.lora import read_adapter, save_adapter
    from loraops.lora.compose import compose

    specs = [_ref_and_weight(s) for s in adapter]
    sources = [_adapter_source(ref) for ref, _ in specs]
    parents = [read_adapter(path) for path, _ in sources]
    result = compose(parents, [w for _, w in specs], method, rank=rank, density=density, seed=seed,
                     parent_refs=[label for _, label in sources])
    save_adapter(result.adapter, out_dir)
    ranks = sorted({m.r for m in result.adapter.modules.values()})
    out.print(f"[green]composed[/] {len(parents)} adapters with {method} -> {out_dir} "
              f"(rank {'/'.join(map(str, ranks))}, discarded energy {result.discarded_energy:.2%})")


# ---- registry --------------------------------------------------------------------------------


def _registry():
    from loraops.registry import Registry

    return Registry()


def _print_json(data) -> None:
    import json

    from loraops.registry import to_json

    typer.echo(json.dumps(to_json(data), indent=2))


@registry_app.command("push")
def registry_push(
    adapter_dir: Path = typer.Argument(..., help="Adapter directory (PEFT format, + loraops.json)."),
    name: str = typer.Option(..., help="Adapter name: lower-case letters, digits, '.', '_', '-'."),
    tenant: Optional[str] = typer.Option(None, help="Tenant that owns the adapter."),
    register_base: bool = typer.Option(False, help="Register its base if the registry lacks it."),
    base_fingerprint: Optional[str] = typer.Option(None, help="Base fingerprint of an adapter made by PEFT."),
) -> None:
    """Store an adapter directory as the next immutable version of NAME."""
    with _registry() as reg:
        v = reg.push(adapter_dir, name, tenant=tenant, register_base=register_base,
                     base_fingerprint=base_fingerprint)
    out.print(f"[green]pushed[/] {v.ref} digest {v.digest[:12]} base {v.base_fingerprint[:19]}")


@registry_app.command("register-base")
def registry_register_base(
    fingerprint: str = typer.Argument(..., help="The base fingerprint (`loraops base info`)."),
    name: str = typer.Option(..., help="A readable name for the base."),
    source: Optional[str] = typer.Option(None, help="Where the base comes from (hub id, path)."),
) -> None:
    """Record a base model so adapters trained on it can be pushed."""
    with _registry() as reg:
        base = reg.register_base(fingerprint, name, source)
    out.print(f"[green]registered[/] base {base.name} {base.fingerprint}")


@registry_app.command("list")
def registry_list(
    tenant: Optional[str] = typer.Option(None, help="Only this tenant's adapters."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List adapters with their latest version and stages."""
    from rich.table import Table

    with _registry() as reg:
        adapters = reg.list_adapters(tenant)
    if as_json:
        return _print_json(adapters)
    table = Table("name", "tenant", "latest", "stages", "created")
    for a in adapters:
        stages = ", ".join(f"{stage}=v{v}" for stage, v in sorted(a.stages.items()))
        table.add_row(a.name, a.tenant or "-", f"v{a.latest}" if a.latest else "-", stages or "-",
                      f"{a.created_at:%Y-%m-%d %H:%M}")
    out.print(table)


@registry_app.command("show")
def registry_show(
    name: str = typer.Argument(..., help="Adapter name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """An adapter's versions (metrics, evals, lineage) and its stage history."""
    from rich.table import Table

    with _registry() as reg:
        detail = reg.show(name)
    if as_json:
        return _print_json(detail)
    holders: dict[int, list[str]] = {}
    for stage, v in detail.stages.items():
        holders.setdefault(v, []).append(stage)
    table = Table("version", "stages", "digest", "base", "metrics", "eval", "parents", "by", "created",
                  title=f"{detail.name} (tenant {detail.tenant or '-'})")
    for v in detail.versions:
        table.add_row(str(v.version), ", ".join(holders.get(v.version, [])) or "-", v.digest[:12],
                      v.base_fingerprint[:19], _short_json(v.metrics), _short_json(v.eval_results),
                      ", ".join(f"{p.name}@{p.version}×{p.weight:g}" for p in v.parents) or "-",
                      v.created_by, f"{v.created_at:%Y-%m-%d %H:%M}")
    out.print(table)
    if detail.history:
        history = Table("when", "stage", "version", "action", "by", "reason", title="stage history")
        for e in detail.history:
            history.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.stage, str(e.version), e.action, e.actor,
                            e.reason or "")
        out.print(history)


def _short_json(data) -> str:
    import json

    return json.dumps(data, sort_keys=True)[:60] if data else "-"


def _overridable(gate):
    """Under --force, a gate that cannot even run (no evaluation, no data) counts as a refusal,
    which --force then overrides and the audit log records with the reason."""
    def run(registry, name, version):
        try:
            return gate(registry, name, version)
        except LoraOpsError as e:
            return False, f"gate could not run: {e}"
    return run


@registry_app.command("promote")
def registry_promote(
    name: str = typer.Argument(..., help="Adapter name."),
    version: int = typer.Argument(..., help="Version number to promote."),
    stage: str = typer.Option("production", help="Stage to assign (production, staging, ...)."),
    force: bool = typer.Option(False, help="Promote even if the gate refuses (needs --reason; audited)."),
    reason: Optional[str] = typer.Option(None, help="Why: kept in the stage history and the audit log."),
    gate: bool = typer.Option(False, "--gate", help="Gate a stage other than production too (production is "
                                                    "always gated): refuse unless the version beats production "
                                                    "(or the base) on its domain by --margin and forgets at most "
                                                    "--max-forgetting."),
    margin: float = typer.Option(0.0, help="Gate: required gain of the primary domain metric."),
    max_forgetting: float = typer.Option(0.10, help="Gate: largest forgetting score allowed."),
    data: Optional[Path] = typer.Option(None, help="Gate: val data to evaluate on when no comparable stored "
                                                   "evaluation exists (see `loraops eval`)."),
    base: Optional[str] = typer.Option(None, help="Gate: base to evaluate on (default gemma-3-270m)."),
) -> None:
    """Point a stage at a version (history kept, audited). Production promotions pass the gate
    (domain gain and forgetting, from the stored evaluation or a fresh one on --data) unless
    --force --reason overrides it, which the audit log records."""
    promotion_gate = None
    if gate or stage == "production":
        from loraops.evals import EvalConfig, GateConfig, PromotionGate

        promotion_gate = PromotionGate(GateConfig(margin, max_forgetting), base=base, data=data,
                                       eval_config=EvalConfig(progress=True))
        if force:
            promotion_gate = _overridable(promotion_gate)
    with _registry() as reg:
        v = reg.promote(name, version, stage=stage, reason=reason, force=force, gate=promotion_gate)
    out.print(f"[green]promoted[/] {v.ref} to {stage}")


@registry_app.command("rollback")
def registry_rollback(
    name: str = typer.Argument(..., help="Adapter name."),
    stage: str = typer.Option("production", help="Stage to roll back."),
    reason: Optional[str] = typer.Option(None, help="Why: kept in the stage history and the audit log."),
) -> None:
    """Give a stage back to the version that held it before the current one."""
    with _registry() as reg:
        v = reg.rollback(name, stage=stage, reason=reason)
    out.print(f"[green]rolled back[/] {name}@{stage} to version {v.version}")


@registry_app.command("audit")
def registry_audit(
    limit: int = typer.Option(100, help="How many entries, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Who did what to which adapter, when and why."""
    from rich.table import Table

    with _registry() as reg:
        entries = reg.audit(limit)
    if as_json:
        return _print_json(entries)
    table = Table("when", "actor", "action", "target", "reason")
    for e in entries:
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.target, e.reason or "")
    out.print(table)


@registry_app.command("fetch")
def registry_fetch(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@STAGE."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the adapter (absent or empty)."),
) -> None:
    """Write a registry version's adapter files (verified against their digests) to a directory."""
    import shutil

    from loraops.atomic import atomic_dir
    from loraops.errors import RegistryError

    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RegistryError(f"--out {out_dir} exists and is not an empty directory")
    with _registry() as reg:
        cached = reg.fetch(ref)
    with atomic_dir(out_dir) as tmp:
        for f in cached.iterdir():
            shutil.copy2(f, tmp / f.name)
    out.print(f"[green]fetched[/] {ref} -> {out_dir}")


# ---- serve -----------------------------------------------------------------------------------


def _log_info(fmt: str, *loggers: str) -> None:
    """Long-running commands log INFO and up of these loggers to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    for name in loggers:
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@app.command("serve")
def serve_cmd(
    base: str = typer.Option("gemma-3-270m", "--base", help="Known name, HF model dir or .gguf file."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=DIR, repeatable."),
    registry: bool = typer.Option(False, "--registry", help="Serve the registry's production versions (polled)."),
    tenants: Optional[Path] = typer.Option(None, "--tenants", help="Tenants file (TOML): keys, adapters, limits."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth", help="No API keys: local experiments only."),
    admin_key: Optional[str] = typer.Option(None, "--admin-key", help="Key for /admin/ (or env LORAOPS_ADMIN_KEY)."),
    metrics_key: Optional[str] = typer.Option(None, "--metrics-key", help="Key for /metrics and /ready's details "
                                                                          "(or env LORAOPS_METRICS_KEY); the admin "
                                                                          "key works too."),
    max_slots: int = typer.Option(8, "--max-slots", help="Adapters resident at once."),
    max_rank: int = typer.Option(64, "--max-rank", help="Largest adapter rank a slot holds."),
    max_batch: int = typer.Option(16, "--max-batch", help="Sequences per engine step (an encoder: texts per "
                                                          "forward)."),
    max_kv_tokens: int = typer.Option(16384, "--max-kv-tokens", help="KV-cache budget in tokens."),
    max_queue: int = typer.Option(64, "--max-queue", help="Waiting requests before 503."),
    max_tokens_cap: int = typer.Option(1024, "--max-tokens-cap", help="Largest max_tokens a request may ask."),
    max_choices: int = typer.Option(8, "--max-choices", help="Largest n / best_of a request may ask (each choice "
                                                              "is a sequence, counted against the token quota)."),
    registry_poll: float = typer.Option(10.0, "--registry-poll", help="Seconds between registry polls."),
    speculate: int = typer.Option(4, "--speculate", help="N-gram (prompt-lookup) draft tokens per greedy request "
                                                         "and step, 0-7; 0 turns speculative decoding off."),
    speculate_step_tokens: int = typer.Option(32, "--speculate-step-tokens",
                                              help="Draft only while a step has at most this many tokens."),
    screen_head: bool = typer.Option(True, "--screen-head/--no-screen-head",
                                     help="Greedy tokens from int8 logits plus an fp32 check of the few "
                                          "candidates (the same tokens as the fp32 head, faster)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (1 is often fastest on a busy CPU)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: int8 weights for the base's linear "
                                                                     "layers (CPU), adapters stay fp32."),
    max_body_bytes: int = typer.Option(2 * 1024 * 1024, "--max-body-bytes", help="Largest JSON request body "
                                                                                  "(larger: 413, unread)."),
    max_prompt_chars: int = typer.Option(262_144, "--max-prompt-chars", help="Largest prompt (or all messages) in "
                                                                             "characters, checked before tokenizing."),
    workers: int = typer.Option(0, "--workers", help="Fine-tuning workers in this process (needs --registry); "
                                                     "0: run `loraops worker` processes instead."),
    max_upload_bytes: int = typer.Option(512 << 20, "--max-upload-bytes",
                                         help="Largest file /v1/files accepts (413 past it)."),
    ray: bool = typer.Option(False, "--ray", help="Scale out on Ray Serve: engine replicas behind an HTTP ingress, "
                                                  "requests routed to the replica holding their adapter "
                                                  "(docs/scale-out.md). Needs the `cluster` extra."),
    replicas: int = typer.Option(2, "--replicas", help="With --ray: engine replicas (each loads the base once)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --ray: join this Ray cluster "
                                                                          "(auto or HOST:PORT); default: start Ray "
                                                                          "on this machine only (loopback)."),
    threads_per_replica: int = typer.Option(2, "--threads-per-replica", help="With --ray: torch threads per "
                                                                             "engine replica."),
    replica_cpus: Optional[float] = typer.Option(None, "--replica-cpus", help="With --ray: Ray CPUs reserved per "
                                                                              "engine replica (default: its threads)."),
    ingress_replicas: int = typer.Option(1, "--ingress-replicas", help="With --ray: HTTP ingress replicas."),
    ingress_cpus: float = typer.Option(0.5, "--ingress-cpus", help="With --ray: Ray CPUs per ingress replica."),
    affinity: bool = typer.Option(True, "--affinity/--no-affinity", help="With --ray: route each request to a "
                                                                         "replica holding its adapter, or by load "
                                                                         "only (for comparison)."),
) -> None:
    """Serve the base and its adapters over an OpenAI-compatible HTTP API (many adapters per batch).
    With --registry it also takes fine-tuning jobs (/v1/files, /v1/fine_tuning/jobs)."""
    from loraops.errors import ConfigError
    from loraops.extras import require

    require("loraops serve", "serve", *(["registry"] if registry else []))
    from loraops.serve.config import ClusterOptions, EngineConfig, HttpLimits, ServeOptions, check_options

    adapters = {}
    for spec in adapter:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter {spec!r}: expected NAME=DIR")
        adapters[name] = path
    opts = ServeOptions(base, adapters, str(tenants) if tenants else None, insecure_no_auth, admin_key,
                        registry, registry_poll, host, port, threads, quantize, workers, max_upload_bytes,
                        EngineConfig(max_slots=max_slots, max_rank=max_rank, max_batch=max_batch,
                                     max_kv_tokens=max_kv_tokens, max_queue=max_queue,
                                     max_tokens_cap=max_tokens_cap, speculate=speculate,
                                     speculate_step_tokens=speculate_step_tokens, screen_head=screen_head),
                        HttpLimits(max_body_bytes=max_body_bytes, max_prompt_chars=max_prompt_chars,
                                   max_choices=max_choices), metrics_key)
    cluster = ClusterOptions(replicas, ray_address, threads_per_replica, replica_cpus, ingress_replicas,
                             ingress_cpus, affinity)
    if ray:
        opts.cluster = cluster
    elif cluster != ClusterOptions():
        raise ConfigError("--replicas, --ray-address, --threads-per-replica, --replica-cpus, --ingress-replicas, "
                          "--ingress-cpus and --no-affinity need --ray")
    check_options(opts)
    _log_info("%(levelname)s: %(message)s", "loraops.serve", "loraops.finetune")
    if opts.cluster is not None:
        require("loraops serve --ray", "cluster")
        from loraops.serve.cluster.app import run
    else:
        from loraops.serve.server import run

    run(opts)


# ---- worker ----------------------------------------------------------------------------------


@app.command("worker")
def worker_cmd(
    lease_seconds: float = typer.Option(60.0, "--lease-seconds", help="A job whose worker stops renewing its "
                                                                      "lease this long is resumed by another."),
    poll_seconds: float = typer.Option(1.0, "--poll-seconds", help="How often to look for jobs and cancellations."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per job process."),
) -> None:
    """Run fine-tuning jobs from the registry database's queue (LORAOPS_DB_URL), one at a time, until
    SIGINT or SIGTERM (the running job goes back to the queue and resumes from its last checkpoint)."""
    from loraops.errors import ConfigError
    from loraops.finetune import WorkerOptions, run_worker

    if lease_seconds <= 0 or poll_seconds <= 0 or (threads is not None and threads < 1):
        raise ConfigError("--lease-seconds and --poll-seconds must be > 0, --threads >= 1")
    _log_info("%(asctime)s %(levelname)s: %(message)s", "loraops.finetune")
    run_worker(WorkerOptions(lease_s=lease_seconds, poll_s=poll_seconds, threads=threads))


# ---- demo ------------------------------------------------------------------------------------


@app.command("demo")
def demo_cmd(
    workdir: Path = typer.Option(Path("demo-run"), help="Where the demo writes data, runs and its registry."),
    steps: Optional[int] = typer.Option(None, help="Training steps per adapter (default: each tenant's recipe)."),
    eval_examples: Optional[int] = typer.Option(None, help="Validation examples per evaluation (default: all)."),
    port: int = typer.Option(8000, help="Port for the server (the next free one if taken)."),
    serve: bool = typer.Option(True, help="Keep the server and dashboard running at the end (Ctrl-C stops); "
                                          "--no-serve ends after the queries (timing runs, CI)."),
) -> None:
    """Run the whole life cycle on the default base for two synthetic tenants (results in WORKDIR/results.json)."""
    from loraops.extras import require

    require("loraops demo", "gemma", "data", "registry", "serve", "demo", install="all")
    from loraops.demo.run import DemoOptions, run

    run(DemoOptions(workdir=workdir, steps=steps, eval_examples=eval_examples, port=port, serve=serve))


def _error(message: str) -> None:
    """One line on stderr; the message is printed as written (rich markup would eat `[data]`)."""
    from rich.markup import escape

    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        app()
    except LoraOpsError as e:
        _error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, permission denied, ...: the user's environment, not a bug
        _error(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
        sys.exit(1)
    except ModuleNotFoundError as e:  # an optional dependency: name the extra that brings it
        from loraops.extras import missing_extra

        words = [a for a in sys.argv[1:3] if not a.startswith("-")]
        line = missing_extra(e, " ".join(["loraops", *words]))
        if line is None:
            raise
        _error(line)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
