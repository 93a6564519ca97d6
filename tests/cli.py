"""Run the real `loraops` console script in a subprocess, as a user would."""

import os
import subprocess
import sys
from pathlib import Path

LORAOPS = str(Path(sys.executable).with_name("loraops"))


def run_cli(*args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LORAOPS, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A bad-input failure: non-zero exit, one `error:` line naming the problem, no traceback.
    (Warnings and progress may also appear on stderr.)"""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
