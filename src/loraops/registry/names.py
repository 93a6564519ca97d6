"""Names and references, validated once at the edge of the registry.

Names never become paths (blobs and the fetch cache are keyed by digest), but they appear in URLs,
model ids and shell commands, so they are kept to a conservative alphabet: no slashes, no
traversal, no whitespace, no upper case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loraops.errors import InvalidNameError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FINGERPRINT_RE = re.compile(r"^(sha256:)?[0-9a-f]{6,64}$")


def check_name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidNameError(f"invalid {what} {value!r}: use lower-case letters, digits, '.', '_' or '-', "
                               f"starting with a letter or digit, at most 64 characters")
    return value


def check_stage(value: str) -> str:
    """A stage name; all-digit names are refused because "name@3" means version 3."""
    check_name(value, "stage")
    if value.isdigit():
        raise InvalidNameError(f"invalid stage {value!r}: a stage name cannot be all digits")
    return value


def check_fingerprint(value: str) -> str:
    if not isinstance(value, str) or not FINGERPRINT_RE.fullmatch(value):
        raise InvalidNameError(f"invalid base fingerprint {value!r}: expected 'sha256:<hex>' "
                               f"(see `loraops base info`)")
    return value


@dataclass(frozen=True)
class Ref:
    """"name" (production if set, else latest), "name@3" (a version) or "name@staging" (a stage)."""

    name: str
    version: int | None = None
    stage: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Ref:
        name, sep, at = ref.partition("@")
        check_name(name, "adapter name")
        if not sep:
            return cls(name)
        if at.isdigit():
            if int(at) < 1:
                raise InvalidNameError(f"invalid reference {ref!r}: versions start at 1")
            return cls(name, version=int(at))
        return cls(name, stage=check_stage(at))

    def __str__(self) -> str:
        at = self.version if self.version is not None else self.stage
        return self.name if at is None else f"{self.name}@{at}"
