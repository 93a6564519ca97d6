"""Dashboard sign-in: the admin key (read-write) or a read-only key, exchanged for a signed cookie.

The cookie holds `role.expiry.signature`, never a key. The signing secret is random per process,
so restarting the server signs everyone out. Keys are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "loraops_ui"
TTL_S = 8 * 3600


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass
class DashboardKeys:
    admin_keys: list[str] = field(default_factory=list)
    read_keys: list[str] = field(default_factory=list)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def role_for(self, key: str) -> str | None:
        d = _digest(key)
        # Check every key (no early exit) so timing does not reveal which list matched.
        admin = any([hmac.compare_digest(d, _digest(k)) for k in self.admin_keys])
        read = any([hmac.compare_digest(d, _digest(k)) for k in self.read_keys])
        return "admin" if admin else "read" if read else None

    def issue(self, role: str, now: float | None = None) -> str:
        expiry = int((now or time.time()) + TTL_S)
        payload = f"{role}.{expiry}"
        return f"{payload}.{hmac.new(self.secret, payload.encode(), 'sha256').hexdigest()}"

    def verify(self, token: str | None, now: float | None = None) -> str | None:
        """-> the role, or None for a missing, forged or expired cookie."""
        if not token or token.count(".") != 2:
            return None
        role, expiry, sig = token.split(".")
        good = hmac.new(self.secret, f"{role}.{expiry}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(sig, good) or not expiry.isdigit() or int(expiry) < (now or time.time()):
            return None
        return role if role in ("admin", "read") else None
