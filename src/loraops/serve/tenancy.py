"""Tenants: who may call, with which keys, which models they see, and their rate limits.

The tenants file (TOML, contract in docs/serving.md):

    [tenants.acme]
    api_keys = ["sk-acme-..."]              # or api_key_hashes = ["sha256:<64 hex>"]
    adapters = ["acme-invoices", "acme-support"]
    allow_base = false
    rate_limit = { requests_per_minute = 600, tokens_per_minute = 200000, max_concurrent = 8 }
    fine_tuning = { max_concurrent_jobs = 2, max_file_bytes = 1073741824, max_tokens_per_job = 20000000 }

Keys are kept only as sha256 digests and compared with hmac.compare_digest against every digest
of every tenant (no early exit), so timing reveals neither a key nor whose key it was. A tenant
sees only its own models: a model it may not use is reported exactly like one that does not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tomllib
from dataclasses import dataclass, field

from loraops.errors import ConfigError
from loraops.serve.errors import AuthError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RateLimit:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True)
class FineTuningQuota:
    """The fine-tuning API's per-tenant bounds (docs/fine-tuning-api.md): jobs not yet finished,
    bytes of all uploaded files together, and training tokens (file tokens × epochs) per job."""

    max_concurrent_jobs: int = 2
    max_file_bytes: int = 1 << 30
    max_tokens_per_job: int = 20_000_000


@dataclass(frozen=True)
class Tenant:
    name: str
    key_digests: tuple[bytes, ...] = ()
    adapters: frozenset[str] | None = frozenset()      # None: every adapter (only --insecure-no-auth)
    allow_base: bool = False
    rate_limit: RateLimit = field(default_factory=RateLimit)
    fine_tuning: FineTuningQuota = field(default_factory=FineTuningQuota)

    def can_use(self, model_id: str, base_name: str) -> bool:
        if model_id == base_name:
            return self.allow_base
        if self.adapters is None:
            return True
        return model_id in self.adapters or model_id.split("@", 1)[0] in self.adapters


ANONYMOUS = Tenant("anonymous", adapters=None, allow_base=True)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _positive(name: str, tenant: str, value, integer: bool = False):
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value <= 0:
        raise ConfigError(f"tenant {tenant!r}: rate_limit.{name} must be a positive "
                          f"{'integer' if integer else 'number'}, got {value!r}")
    return value


def _tenant(name: str, raw: dict) -> Tenant:
    if not isinstance(raw, dict):
        raise ConfigError(f"tenant {name!r} must be a table")
    unknown = set(raw) - {"api_keys", "api_key_hashes", "adapters", "allow_base", "rate_limit", "fine_tuning"}
    if unknown:
        raise ConfigError(f"tenant {name!r}: unknown field(s) {sorted(unknown)}")
    keys, hashes = raw.get("api_keys", []), raw.get("api_key_hashes", [])
    if not all(isinstance(k, str) and len(k) >= 8 for k in keys):
        raise ConfigError(f"tenant {name!r}: api_keys must be strings of at least 8 characters")
    digests = [digest(k) for k in keys]
    for h in hashes:
        if not isinstance(h, str) or not h.startswith("sha256:") or not _HEX64.match(h[7:]):
            raise ConfigError(f"tenant {name!r}: api_key_hashes entries must look like 'sha256:<64 hex digits>'")
        digests.append(bytes.fromhex(h[7:]))
    if not digests:
        raise ConfigError(f"tenant {name!r} has no api_keys or api_key_hashes")
    adapters = raw.get("adapters", [])
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        raise ConfigError(f"tenant {name!r}: adapters must be a list of names")
    allow_base = raw.get("allow_base", False)
    if not isinstance(allow_base, bool):
        raise ConfigError(f"tenant {name!r}: allow_base must be true or false")
    rl = raw.get("rate_limit", {})
    if not isinstance(rl, dict) or set(rl) - {"requests_per_minute", "tokens_per_minute", "max_concurrent"}:
        raise ConfigError(f"tenant {name!r}: rate_limit takes requests_per_minute, tokens_per_minute, "
                          f"max_concurrent")
    limit = RateLimit(_positive("requests_per_minute", name, rl.get("requests_per_minute")),
                      _positive("tokens_per_minute", name, rl.get("tokens_per_minute")),
                      _positive("max_concurrent", name, rl.get("max_concurrent"), integer=True))
    quota = _quota(name, raw.get("fine_tuning", {}))
    return Tenant(name, tuple(digests), frozenset(adapters), allow_base, limit, quota)


def _quota(tenant: str, raw) -> FineTuningQuota:
    names = ("max_concurrent_jobs", "max_file_bytes", "max_tokens_per_job")
    if not isinstance(raw, dict) or set(raw) - set(names):
        raise ConfigError(f"tenant {tenant!r}: fine_tuning takes {', '.join(names)}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"tenant {tenant!r}: fine_tuning.{key} must be a positive integer, got {value!r}")
    return FineTuningQuota(**raw)


class Tenants:
    def __init__(self, tenants: list[Tenant]):
        self.tenants = tenants
        seen: dict[bytes, str] = {}
        for t in tenants:
            for d in t.key_digests:
                if d in seen and seen[d] != t.name:
                    raise ConfigError(f"tenants {seen[d]!r} and {t.name!r} share an API key")
                seen[d] = t.name

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tenants:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read tenants file {str(path)!r}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"tenants file {str(path)!r} is not valid TOML: {e}") from e
        table = raw.get("tenants")
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"tenants file {str(path)!r} defines no [tenants.NAME] table")
        return cls([_tenant(name, t) for name, t in table.items()])

    def authenticate(self, key: str | None) -> Tenant:
        """The tenant owning `key`, compared in constant time. Raises AuthError (401)."""
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        d = digest(key)
        found = None
        for t in self.tenants:
            for known in t.key_digests:
                if hmac.compare_digest(d, known):
                    found = t
        if found is None:
            raise AuthError("invalid API key")
        return found
