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


# ---- merge -----------------------------------------------------------------------------------


@app.command("merge")
def merge_cmd(
    adapter: str = typer.Option(..., help="Adapter directory (PEFT format)."),
    out_dir: Path = typer.Option(..., "--out", help="Where to write the merged HF model directory."),
    base: str = typer.Option("gemma-3-270m", help="Known name, HF model dir or .gguf file."),
    tolerance: float = typer.Option(1e-3, help="Max abs logit difference allowed between merged and unmerged."),
    force: bool = typer.Option(False, help="Load even if the adapter is bound to a different base."),
) -> None:
    """Fold an adapter into its base and write a plain transformers model directory."""
    from loraops.models.merge_model import merge_to_dir

    report = merge_to_dir(base, adapter, out_dir, tolerance=tolerance, force=force)
    out.print(f"[green]merged[/] {adapter} into {report.base_name} -> {out_dir}\n"
              f"max |logits merged - unmerged| = {report.max_abs_diff:.3e} (tolerance {tolerance:g})")


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
    parents = [read_adapter(ref) for ref, _ in specs]
    result = compose(parents, [w for _, w in specs], method, rank=rank, density=density, seed=seed,
                     parent_refs=[ref for ref, _ in specs])
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
    register_base: bool = typer.Option(False, help="Register the adapter's base if the registry does not know it."),
    base_fingerprint: Optional[str] = typer.Option(None, help="Base fingerprint for an adapter made by PEFT."),
) -> None:
    """Store an adapter directory as the next immutable version of NAME."""
    with _registry() as reg:
        v = reg.push(adapter_dir, name, tenant=tenant, register_base=register_base, base_fingerprint=base_fingerprint)
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
            history.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.stage, str(e.version), e.action, e.actor, e.reason or "")
        out.print(history)


def _short_json(data) -> str:
    import json

    return json.dumps(data, sort_keys=True)[:60] if data else "-"


@registry_app.command("promote")
def registry_promote(
    name: str = typer.Argument(..., help="Adapter name."),
    version: int = typer.Argument(..., help="Version number to promote."),
    stage: str = typer.Option("production", help="Stage to assign (production, staging, ...)."),
    force: bool = typer.Option(False, help="Promote even if the gate refuses (needs --reason; audited)."),
    reason: Optional[str] = typer.Option(None, help="Why: kept in the stage history and the audit log."),
) -> None:
    """Point a stage at a version (history kept, audited)."""
    with _registry() as reg:
        v = reg.promote(name, version, stage=stage, reason=reason, force=force)
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
    out_dir: Path = typer.Option(..., "--out", help="Directory to write the adapter to (must not exist or be empty)."),
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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        app()
    except LoraOpsError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, permission denied, ...: the user's environment, not a bug
        console.print(f"[red]error:[/] {e.strerror or e}: {e.filename or ''}".rstrip(": "), highlight=False,
                      soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
