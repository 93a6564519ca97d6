"""Dashboard sign-in: the admin key (read-write) or a read-only key, exchanged for a signed cookie.

The cookie holds `role.expiry.nonce.signature`, never a key. The signing secret is random per
process, so restarting the server signs everyone out; signing out revokes that cookie (its
signature is remembered until it would have expired anyway), so a copy of it no longer works.
State-changing forms carry a CSRF token derived from the cookie (`csrf_token`). Keys and
signatures are compared in constant time; anything malformed is simply not a session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
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

    _revoked: dict[str, int] = field(default_factory=dict, init=False, repr=False)  # signature -> expiry
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _sign(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), "sha256").hexdigest()

    def issue(self, role: str, now: float | None = None) -> str:
        expiry = int((now or time.time()) + TTL_S)
        payload = f"{role}.{expiry}.{secrets.token_hex(8)}"     # the nonce: every sign-in a distinct cookie
        return f"{payload}.{self._sign(payload)}"

    def _parts(self, token: str | None, now: float | None) -> tuple[str, int, str] | None:
        """(role, expiry, signature) of a valid, unexpired, unrevoked token; else None."""
        if not token or not token.isascii() or token.count(".") != 3:
            return None
        role, expiry, nonce, sig = token.split(".")
        if not hmac.compare_digest(sig.encode(), self._sign(f"{role}.{expiry}.{nonce}").encode()):
            return None
        if not expiry.isdigit() or int(expiry) < (now or time.time()) or role not in ("admin", "read"):
            return None
        with self._lock:
            if sig in self._revoked:
                return None
        return role, int(expiry), sig

    def verify(self, token: str | None, now: float | None = None) -> str | None:
        """-> the role, or None for a missing, malformed, forged, expired or revoked cookie."""
        parts = self._parts(token, now)
        return parts[0] if parts else None

    def revoke(self, token: str | None, now: float | None = None) -> None:
        """Sign this cookie out for good; forget revocations of cookies that have expired anyway."""
        parts = self._parts(token, now)
        t = now or time.time()
        with self._lock:
            for sig in [s for s, expiry in self._revoked.items() if expiry < t]:
                del self._revoked[sig]
            if parts is not None:
                self._revoked[parts[2]] = parts[1]

    def csrf_token(self, token: str | None) -> str:
        """The token a form posted with this session cookie must carry ("" without a session)."""
        parts = self._parts(token, None)
        return self._sign(f"csrf.{parts[2]}") if parts else ""

    def check_csrf(self, token: str | None, presented: str) -> bool:
        expected = self.csrf_token(token)
        return bool(expected) and presented.isascii() and hmac.compare_digest(presented.encode(), expected.encode())
