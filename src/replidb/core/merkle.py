"""Merkle trees for anti-entropy (issue #9): two replicas find the keys on which they
differ by exchanging hashes, top down, instead of the data.

Keys fall into 2**depth buckets by the top bits of their hash (core/hashring.py's
``key_point``); a leaf is the hash of its bucket's (key, version digest) pairs in key
order, and each inner node the hash of its two children. Equal roots: nothing to
repair. Otherwise ``diff`` names the buckets whose leaves differ, descending only
where the hashes differ; a repair then exchanges those buckets' rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from replidb.core.hashring import key_point

__all__ = ["MerkleTree", "bucket_of"]

_EMPTY = hashlib.blake2b(b"", digest_size=16).digest()


def bucket_of(key: bytes, depth: int) -> int:
    return key_point(key) >> (64 - depth) if depth else 0


class MerkleTree:
    def __init__(self, items: Iterable[tuple[bytes, bytes]], depth: int = 10) -> None:
        """``items``: (key, digest of its version); depth: log2 of the bucket count."""
        if not 0 <= depth <= 20:
            raise ValueError("depth must be between 0 and 20")
        self.depth = depth
        buckets: list[list[tuple[bytes, bytes]]] = [[] for _ in range(1 << depth)]
        for key, digest in items:
            buckets[bucket_of(key, depth)].append((key, digest))
        leaves = []
        for bucket in buckets:
            if not bucket:
                leaves.append(_EMPTY)
                continue
            h = hashlib.blake2b(digest_size=16)
            for key, digest in sorted(bucket):
                h.update(len(key).to_bytes(4, "big") + key + digest)
            leaves.append(h.digest())
        # levels[0] is the root level, levels[depth] the leaves.
        levels = [leaves]
        while len(levels[0]) > 1:
            below = levels[0]
            levels.insert(0, [_pair(below[i], below[i + 1]) for i in range(0, len(below), 2)])
        self.levels = levels

    @property
    def root(self) -> bytes:
        return self.levels[0][0]

    def level(self, number: int) -> list[bytes]:
        return self.levels[number]

    def diff(self, other: MerkleTree) -> list[int]:
        """The buckets whose contents differ (both trees of one depth)."""
        if other.depth != self.depth:
            raise ValueError("trees of different depths cannot be compared")
        suspects = [0]
        for number in range(self.depth + 1):
            mine, theirs = self.levels[number], other.levels[number]
            different = [i for i in suspects if mine[i] != theirs[i]]
            if number == self.depth:
                return different
            suspects = [child for i in different for child in (2 * i, 2 * i + 1)]
        return []


def _pair(left: bytes, right: bytes) -> bytes:
    if left == right == _EMPTY:
        return _EMPTY
    return hashlib.blake2b(left + right, digest_size=16).digest()
