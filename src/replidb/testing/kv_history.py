"""Recorded histories of key reads and writes on a live leaderless cluster (issue #9),
in the form the per-key checker takes (``testing.sim_leaderless.check_history``).

Each ``HistoryWorker`` reads a key, then writes it with the context it read, so every
write's causal past (what its context had seen) is known and the checker can judge
every read: stale if it missed a write acknowledged before it started.
"""

from __future__ import annotations

import random
import threading
import time

from replidb.client.kv import KvClient
from replidb.errors import Error, OutcomeUnknown
from replidb.testing.sim_leaderless import Event
from replidb.transport.kv_wire import encode_key

__all__ = ["HistoryWorker", "final_state"]


class HistoryWorker(threading.Thread):
    def __init__(
        self, name: str, client: KvClient, keys: int, stop: threading.Event, table: str = "t",
        r: int | None = None, w: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.name, self.client, self.keys, self.stop = name, client, keys, stop
        self.table, self.r, self.w = table, r, w
        self.history: list[Event] = []
        self.latencies: dict[str, list[float]] = {"read": [], "write": []}
        self.rng = random.Random(name)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            key = self.rng.randrange(self.keys)
            read = Event("read", encode_key(self.table, [key]), time.monotonic_ns())
            try:
                found = self.client.get(self.table, key, r=self.r)
                read.seen = tuple(sorted(row["tag"] for row in found.rows))
                read.outcome = "ok"
            except Error:
                read.outcome = "failed"
                found = None
            read.end = time.monotonic_ns()
            self._record(read)
            if found is None:
                continue
            tag = f"{self.name}-{i}"
            write = Event("write", read.key, time.monotonic_ns(), value=tag, tag=tag,
                          context_tags=frozenset(read.seen))  # fmt: skip
            try:
                self.client.put(self.table, {"id": key, "tag": tag}, context=found, w=self.w)
                write.outcome = "ok"
            except OutcomeUnknown:
                write.outcome = "unknown"
            except Error:
                write.outcome = "failed"
            write.end = time.monotonic_ns()
            self._record(write)
            time.sleep(0.002)

    def _record(self, event: Event) -> None:
        self.history.append(event)
        if event.outcome == "ok":
            self.latencies[event.kind].append((event.end - event.start) / 1e6)


def final_state(
    client: KvClient, keys: int, table: str = "t"
) -> dict[bytes, tuple[set[str], set[str]]]:
    """Every key's live sibling tags, read from all N replicas (no purges here)."""
    final: dict[bytes, tuple[set[str], set[str]]] = {}
    for key in range(keys):
        rows = client.get(table, key, r=client.n).rows
        final[encode_key(table, [key])] = ({row["tag"] for row in rows}, set())
    return final
