"""Where loraops keeps its state: LORAOPS_HOME (default ~/.loraops). Read on each call, never cached,
so tests and tools can point it elsewhere with the environment variable."""

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("LORAOPS_HOME") or Path.home() / ".loraops").expanduser()


def models_dir() -> Path:
    """Converted base models. LORAOPS_MODELS moves them out of the home (tests share one cache)."""
    return Path(os.environ.get("LORAOPS_MODELS") or home() / "models").expanduser()
