"""Exact and near-duplicate detection over a stream of records, with memory bounded per record.

Exact: a 16-byte blake2b digest of the record; the seen-set holds only digests, about 110 bytes per
kept record with CPython's bytes and set overhead (measured). Near: MinHash (64 permutations, 32-bit)
over word shingles, indexed by MinHashLSH and checked against the stored signatures, about 3 KB per
kept record (measured: 7 LSH bands × ~320 B of bucket set and band key, ~350 B of signature array).
A 1-GB input of 1-KB records (1M records) therefore needs ~3 GB of RAM with near-dedup on and ~110 MB
with it off; for larger inputs turn near-dedup off or curate shards.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

from loraops.data.formats import Record

NUM_PERM = 64
SHINGLE_WORDS = 3


def record_key(record: Record) -> bytes:
    """Digest of the record's content (not its line number): equal records, equal keys. Each part is
    length-prefixed, so no two different records hash the same bytes."""
    h = hashlib.blake2b(digest_size=16)
    history = (part for m in record.history for part in (m.role, m.content))
    for part in (record.kind, record.prompt, *history, record.completion):
        data = part.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class ExactDedup:
    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def is_duplicate(self, record: Record) -> bool:
        """True if an equal record was seen before; otherwise remember this one."""
        key = record_key(record)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[bytes]:
    """Lower-cased word n-grams; a text shorter than n words is one shingle."""
    words = text.lower().split()
    return {" ".join(words[i:i + n]).encode() for i in range(max(1, len(words) - n + 1))}


class NearDedup:
    """A record is a near duplicate when the estimated Jaccard similarity of its shingles with a kept
    record's is at least `threshold`."""

    def __init__(self, threshold: float = 0.85) -> None:
        from datasketch import MinHash, MinHashLSH  # the data extra: only near-dedup needs it

        self._minhash_cls = MinHash
        self.threshold = threshold
        # Weights favour recall: LSH only proposes candidates, the signature check below decides.
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=(0.1, 0.9))
        # crc32 is deterministic across processes (unlike hash()) and fast; 32 bits fits datasketch's
        # default affine32 scheme. The permutations are drawn once (fixed seed: the same decisions on
        # every run) instead of per MinHash.
        self._permutations = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=zlib.crc32).permutations
        self._signatures: dict[int, np.ndarray] = {}

    def _minhash(self, record: Record):
        m = self._minhash_cls(num_perm=NUM_PERM, hashfunc=zlib.crc32, permutations=self._permutations,
                    scheme="affine32")
        m.update_batch(list(shingles("\n".join(record.texts()))))
        return m

    def find(self, record: Record) -> int | None:
        """The line of a kept near duplicate of `record`, or None (and `record` is kept and indexed)."""
        m = self._minhash(record)
        for line in sorted(self._lsh.query(m)):
            if np.mean(self._signatures[line] == m.hashvalues) >= self.threshold:
                return line
        self._lsh.insert(record.line, m, check_duplication=False)
        self._signatures[record.line] = m.hashvalues
        return None
