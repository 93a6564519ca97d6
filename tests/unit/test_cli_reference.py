"""docs/cli.md is generated from the Typer app; this fails when a command changes and the doc does not."""

import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REGENERATE = ".venv/bin/typer loraops.cli utils docs --name loraops --output docs/cli.md"


def test_cli_reference_is_current():
    typer = Path(sys.executable).with_name("typer")
    out = subprocess.run([str(typer), "loraops.cli", "utils", "docs", "--name", "loraops"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert DOC.read_text().strip() == out.strip(), f"docs/cli.md is stale; run: {REGENERATE}"


def test_help_is_fast_and_lists_every_group():
    out = subprocess.run([str(Path(sys.executable).with_name("loraops")), "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for group in ("base", "data", "registry", "merge", "compose"):
        assert group in out
