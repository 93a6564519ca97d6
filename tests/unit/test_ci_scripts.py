"""scripts/system-deps.sh and scripts/postgres.sh: where they cannot install, CI fails loudly and
elsewhere the run goes on with a loud warning (never silence and exit 0)."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[2] / "scripts"


@pytest.fixture
def no_root(tmp_path):
    """A PATH on which `id -u` says 1000 and neither chromium nor apt-get exists; no PostgreSQL."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ls", "sort", "tail", "dirname", "cat"):
        (bin_dir / tool).symlink_to(subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                                                   text=True, check=True).stdout.strip())
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    return {"PATH": str(bin_dir), "LORAOPS_PG_ROOT": str(tmp_path / "no-postgresql")}


def run(script: str, env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run(["/bin/bash", str(SCRIPTS / script)], capture_output=True, text=True, timeout=30,
                          env={**base, **env})


@pytest.mark.parametrize("script", ["system-deps.sh", "postgres.sh"])
def test_in_ci_a_dependency_that_cannot_be_installed_fails_the_run(no_root, script):
    proc = run(script, {**no_root, "CI": "true"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert "CI=true" in proc.stderr and "failing" in proc.stderr and "needs root and apt-get" in proc.stderr


@pytest.mark.parametrize("script", ["system-deps.sh", "postgres.sh"])
def test_elsewhere_it_warns_loudly_and_goes_on(no_root, script):
    proc = run(script, no_root)
    assert proc.returncode == 0 and proc.stdout == ""
    assert "!!!" in proc.stderr and "SKIPPED" in proc.stderr


pytest_plugins = ["pytester"]


@pytest.mark.parametrize("ci, outcome", [("true", {"failed": 1}), ("", {"skipped": 1})])
def test_in_ci_a_skipped_test_fails(pytester, monkeypatch, ci, outcome):
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile("import pytest\n\ndef test_needs_something():\n    pytest.skip('no chromium')\n")
    monkeypatch.setenv("CI", ci)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(**outcome)
