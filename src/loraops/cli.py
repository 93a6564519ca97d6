"""The `loraops` command: a thin Typer layer over the package's Python API.

Each command calls one importable function; errors of type LoraOpsError print as one line on
stderr with a non-zero exit code and no traceback. Heavy imports happen inside commands so that
`loraops --help` stays fast.
"""

from __future__ import annotations

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


def main() -> None:
    try:
        app()
    except LoraOpsError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
