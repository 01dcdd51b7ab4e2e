"""Consistent hashing with virtual nodes, for leaderless replication (issue #9): which
N nodes hold a key (its *preference list*), and, when some of them are down, which
nodes stand in for them (sloppy quorum).

Each node owns ``vnodes`` points on a 64-bit ring (BLAKE2b of "node#i"); a key hashes
to a point, and its preference list is the first N distinct nodes met walking
clockwise from it. Adding or removing a node moves only the keys next to its points.
With N equal to the cluster size every node holds every key. Deterministic: the same
nodes give the same ring everywhere, with no randomness and no clock.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Sequence

__all__ = ["HashRing", "key_point"]


def key_point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, nodes: Sequence[str], vnodes: int = 64) -> None:
        if not nodes:
            raise ValueError("a ring needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node ids in {list(nodes)}")
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.nodes = tuple(sorted(nodes))
        points = sorted(
            (key_point(f"{node}#{i}".encode()), node) for node in self.nodes for i in range(vnodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def _walk(self, key: bytes) -> list[str]:
        """Every node once, in ring order from the key's point."""
        start = bisect.bisect_right(self._points, key_point(key))
        seen: list[str] = []
        total = len(self._owners)
        for step in range(total):
            node = self._owners[(start + step) % total]
            if node not in seen:
                seen.append(node)
                if len(seen) == len(self.nodes):
                    break
        return seen

    def preference_list(self, key: bytes, n: int) -> list[str]:
        """The N nodes that hold ``key``."""
        if not 1 <= n <= len(self.nodes):
            raise ValueError(f"N={n} must be between 1 and the number of nodes ({len(self.nodes)})")
        return self._walk(key)[:n]

    def sloppy_list(self, key: bytes, n: int, down: Collection[str]) -> list[tuple[str, str]]:
        """Where a write goes when some preferred nodes are down: (node, for whom) —
        each live preferred node for itself, and for each one down the next live node
        past the preference list, holding the write as a hint for it."""
        walk = self._walk(key)
        preferred, beyond = walk[:n], [w for w in walk[n:] if w not in down]
        targets = [(node, node) for node in preferred if node not in down]
        for node in preferred:
            if node in down and beyond:
                targets.append((beyond.pop(0), node))
        return targets
