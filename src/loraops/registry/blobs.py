"""Content-addressed blob store: ROOT/sha256/ab/cdef… holds the bytes whose sha256 is abcdef….

A blob is written to a temp name in its final directory, fsynced, then os.replace'd, so a reader
(or a crash) sees either no blob or the whole blob. Every read re-hashes the bytes and raises
BlobCorruptError on a mismatch: the digest is the only thing we trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from loraops.errors import BlobCorruptError, RegistryError

CHUNK = 1 << 20


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in _chunks(f):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest[2:]

    def put_file(self, src: Path) -> str:
        """Store the bytes of `src`; -> their digest. Idempotent; a corrupt existing copy is replaced."""
        digest = file_digest(src)
        if self._intact(digest):
            return digest
        with open(src, "rb") as f:
            written = self._write(digest, _chunks(f))
        if written != digest:  # the file changed between the two reads
            raise RegistryError(f"{src} changed while it was being stored; push again")
        return digest

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not self._intact(digest):
            self._write(digest, iter([data]))
        return digest

    def read_bytes(self, digest: str) -> bytes:
        data = self._open(digest).read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobCorruptError(f"blob {digest} is corrupt: its bytes no longer match their sha256 "
                                   f"({self.path(digest)})")
        return data

    def copy_to(self, digest: str, dest: Path) -> None:
        """Write blob `digest` to `dest`, verifying it on the way (dest is left partial on error)."""
        h = hashlib.sha256()
        with self._open(digest) as f, open(dest, "wb") as out:
            for chunk in _chunks(f):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != digest:
            raise BlobCorruptError(f"blob {digest} is corrupt: its bytes no longer match their sha256 "
                                   f"({self.path(digest)})")

    def _open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobCorruptError(f"blob {digest} is missing from {self.root}") from None

    def _intact(self, digest: str) -> bool:
        return self.path(digest).exists() and file_digest(self.path(digest)) == digest

    def _write(self, digest: str, chunks: Iterator[bytes]) -> str:
        """Write chunks to the blob's final path atomically; -> the sha256 of what was written."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:16]}.tmp-", dir=final.parent)
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; blobs are read by other users of the registry
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() == digest:
                os.replace(tmp, final)
                _fsync_dir(final.parent)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return h.hexdigest()
