"""Deterministic train/val split: a record's side depends only on its content and the seed, not on the
order of the file or on which other records exist, so re-curating grown data keeps old records in place."""

from __future__ import annotations

import hashlib


def split_key(line: bytes, seed: int = 0) -> int:
    """A uniform 64-bit number fixed by the line's content and the seed."""
    digest = hashlib.blake2b(line, digest_size=8, salt=seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little")


def is_val(line: bytes, val_fraction: float, seed: int = 0) -> bool:
    """`line` is the record's output JSON; ~val_fraction of distinct lines land in val."""
    return split_key(line, seed) < val_fraction * 2**64
