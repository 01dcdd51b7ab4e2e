"""A closed-loop load generator: ``replidb bench`` (issue #7).

``concurrency`` clients each send one request, wait for its answer, and send the next,
for ``duration`` seconds (after a short warm-up that is not measured). Workloads:

- ``insert``: single-row inserts of ~100-byte values, one per transaction;
- ``batch``: 100 rows per transaction;
- ``read-mix``: 90% point reads (at the connection's consistency), 10% inserts;
- ``hot-update``: updates of a few (16) rows, so writers collide on the same rows.

Reported: operations/s (writes and reads apart), latency p50/p99/max per operation,
and follower lag: every 200 ms a probe writes a marker row and times how long until
each follower has it (``any`` reads straight at the follower), p99 over all samples.
Each client is a thread with its own connection; the clients spend their time waiting
on sockets, which releases the GIL, so one process drives dozens of them.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import replidb
from replidb.client import Client
from replidb.errors import Error

__all__ = ["WORKLOADS", "BenchResult", "ReplidbTarget", "Target", "local_cluster", "run_bench"]

WORKLOADS = ("insert", "batch", "read-mix", "hot-update")
_VALUE = "x" * 100
_HOT_ROWS = 16
_WARMUP_S = 1.0
_PROBE_S = 0.2


@dataclass
class BenchResult:
    workload: str
    concurrency: int
    duration_s: float
    writes: int
    reads: int
    errors: int
    writes_per_s: float
    reads_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    follower_lag_p99_ms: float | None
    lag_samples: int
    policy: str = ""
    writes_per_group: float | None = None  # replidb: client writes per leader transaction

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def local_cluster(nodes: int, sync: str = "", stream: str = "logical") -> Iterator[str]:
    """A throwaway cluster of ``nodes`` processes on loopback, with a leader; yields its
    address list, and stops every process it started."""
    from replidb.testing.local_cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(
            Path(tmp), nodes=nodes, extra=("--sync", sync or "async", "--stream", stream)
        )
        cluster.start_all()
        try:
            cluster.wait_for_leader(timeout=20)
            yield cluster.connect
        finally:
            cluster.stop_all()


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Target(Protocol):
    """What the generator loads: replidb here, a peer (bench/peers/) elsewhere. The
    workloads' SQL is written with ``?`` and the generic ``ID_COLUMN``; a target says
    how its driver spells them."""

    placeholder: str  # "?" (qmark) or "%s" (format)
    id_column: str  # an auto-numbered integer key column
    errors: tuple[type[BaseException], ...]  # what a failed request raises

    def connect(self) -> Any:
        """A DB-API connection in autocommit mode, to where writes go."""
        ...

    def replica_readers(self) -> list[Any]:
        """One connection per follower, reading that follower's own data."""
        ...


class ReplidbTarget:
    placeholder = "?"
    id_column = "INTEGER PRIMARY KEY"
    errors: tuple[type[BaseException], ...] = (Error,)

    def __init__(self, addresses: str, sync: str = "") -> None:
        self.addresses = addresses
        self.sync = sync

    def connect(self) -> Any:
        return replidb.connect(
            self.addresses, autocommit=True, timeout=10.0, sync=self.sync or None
        )

    def group_commits(self) -> tuple[int, int]:
        """The leader's (transactions, client writes) so far (node/group_commit.py)."""
        client = Client(self.addresses, timeout=10.0)
        leader = client.status().leader_address
        status = Client(leader, timeout=10.0).status() if leader else client.status()
        return status.write_groups, status.grouped_writes

    def replica_readers(self) -> list[Any]:
        status = Client(self.addresses, timeout=10.0).status()
        members = {status.id: status.address, **status.peers}
        return [
            replidb.connect(address, consistency="any", autocommit=True, timeout=5.0)
            for node, address in sorted(members.items())
            if node != status.leader
        ]


def _sql(target: Target, text: str) -> str:
    return text.replace("ID_COLUMN", target.id_column).replace("?", target.placeholder)


def _setup(target: Target, workload: str) -> None:
    conn = target.connect()
    cur = conn.cursor()
    cur.execute(
        _sql(target, "CREATE TABLE IF NOT EXISTS bench(id ID_COLUMN, client INTEGER, v TEXT)")
    )
    cur.execute(_sql(target, "CREATE TABLE IF NOT EXISTS bench_probe(id ID_COLUMN, at REAL)"))
    if workload == "hot-update":
        cur.execute(
            _sql(target, "CREATE TABLE IF NOT EXISTS bench_hot(id INTEGER PRIMARY KEY, n INTEGER)")
        )
        for i in range(_HOT_ROWS):
            cur.execute(
                _sql(target, "INSERT INTO bench_hot(id, n) SELECT ?, 0 "
                     "WHERE NOT EXISTS (SELECT 1 FROM bench_hot WHERE id = ?)"),
                (i, i),
            )  # fmt: skip
    if workload == "read-mix":
        cur.executemany(
            _sql(target, "INSERT INTO bench(client, v) VALUES (-1, ?)"),
            [(_VALUE,) for _ in range(1000)],
        )
    conn.close()


class _Worker(threading.Thread):
    def __init__(self, number: int, target: Target, workload: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.number = number
        self.workload = workload
        self.stop = stop
        self.target = target
        self.conn = target.connect()
        self.rng = random.Random(number)
        self.latencies: list[tuple[float, float, bool]] = []  # (started, seconds, write)
        self.errors = 0
        self.insert = _sql(target, "INSERT INTO bench(client, v) VALUES (?, ?)")
        self.update = _sql(target, "UPDATE bench_hot SET n = n + 1 WHERE id = ?")
        self.read = _sql(target, "SELECT v FROM bench WHERE id = ?")

    def run(self) -> None:
        cursor = self.conn.cursor()
        while not self.stop.is_set():
            write, action = self._next(cursor)
            started = time.monotonic()
            try:
                action()
            except self.target.errors:
                self.errors += 1
                continue
            self.latencies.append((started, time.monotonic() - started, write))
        self.conn.close()

    def _next(self, cursor: Any) -> tuple[bool, Callable[[], object]]:
        if self.workload == "insert":
            return True, lambda: cursor.execute(self.insert, (self.number, _VALUE))
        if self.workload == "batch":
            rows = [(self.number, _VALUE)] * 100
            return True, lambda: cursor.executemany(self.insert, rows)
        if self.workload == "hot-update":
            row = self.rng.randrange(_HOT_ROWS)
            return True, lambda: cursor.execute(self.update, (row,))
        if self.rng.random() < 0.9:  # read-mix
            key = self.rng.randrange(1, 1001)
            return False, lambda: (cursor.execute(self.read, (key,)), cursor.fetchall())
        return True, lambda: cursor.execute(self.insert, (self.number, _VALUE))


class _LagProbe(threading.Thread):
    """Writes a marker every 200 ms and times its arrival on each follower."""

    def __init__(self, target: Target, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.stop = stop
        self.samples: list[float] = []

    def run(self) -> None:
        try:
            readers = self.target.replica_readers()
            writer = self.target.connect()
        except self.target.errors:
            return
        insert = _sql(self.target, "INSERT INTO bench_probe(at) VALUES (?) RETURNING id")
        check = _sql(self.target, "SELECT 1 FROM bench_probe WHERE id = ?")
        try:
            while not self.stop.wait(_PROBE_S):
                try:
                    cursor = writer.cursor()
                    cursor.execute(insert, (time.time(),))
                    row = cursor.fetchone()
                    written = time.monotonic()
                except self.target.errors:
                    continue
                if row is None:
                    continue
                for reader in readers:
                    self._time_arrival(reader, check, int(row[0]), written)
        finally:
            writer.close()
            for reader in readers:
                reader.close()

    def _time_arrival(self, reader: Any, check: str, probe_id: int, written: float) -> None:
        cursor = reader.cursor()
        while not self.stop.is_set() and time.monotonic() - written < 5.0:
            try:
                cursor.execute(check, (probe_id,))
                if cursor.fetchall():
                    self.samples.append(time.monotonic() - written)
                    return
            except self.target.errors:
                return
            time.sleep(0.001)


def run_bench(
    addresses: str | Target,
    workload: str = "insert",
    concurrency: int = 8,
    duration: float = 10.0,
    sync: str = "",
    progress: Callable[[float, int], None] | None = None,
) -> BenchResult:
    """Run one closed-loop benchmark against a running replidb cluster (``addresses``,
    writing under ``sync``) or any other ``Target``."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}: choose {', '.join(WORKLOADS)}")
    target = ReplidbTarget(addresses, sync) if isinstance(addresses, str) else addresses
    _setup(target, workload)
    groups_before = target.group_commits() if isinstance(target, ReplidbTarget) else None
    stop = threading.Event()
    workers = [_Worker(i, target, workload, stop) for i in range(concurrency)]
    probe = _LagProbe(target, stop)
    for worker in workers:
        worker.start()
    started = time.monotonic()
    measure_from = started + _WARMUP_S
    probe_started = False
    end = measure_from + duration
    while (now := time.monotonic()) < end:
        if not probe_started and now >= measure_from:
            probe.start()
            probe_started = True
        if progress is not None:
            done = sum(len(w.latencies) for w in workers)
            progress(max(0.0, now - measure_from), done)
        time.sleep(0.1)
    stop.set()
    for worker in workers:
        worker.join(15)
    if probe_started:
        probe.join(15)
    measured = [
        (seconds, write)
        for w in workers
        for began, seconds, write in w.latencies
        if measure_from <= began < end
    ]
    latencies_ms = [seconds * 1000 for seconds, _ in measured]
    writes = sum(1 for _, write in measured if write)
    reads = len(measured) - writes
    rows = writes * (100 if workload == "batch" else 1)
    lag = probe.samples
    per_group = None
    if groups_before is not None and isinstance(target, ReplidbTarget):
        groups, grouped = (
            b - a for a, b in zip(groups_before, target.group_commits(), strict=True)
        )
        per_group = round(grouped / groups, 2) if groups else None
    return BenchResult(
        workload=workload,
        concurrency=concurrency,
        duration_s=duration,
        writes=writes,
        reads=reads,
        errors=sum(w.errors for w in workers),
        writes_per_s=round(writes / duration, 1),
        reads_per_s=round(reads / duration, 1),
        rows_per_s=round(rows / duration, 1),
        p50_ms=round(statistics.median(latencies_ms), 3) if latencies_ms else 0.0,
        p99_ms=round(_percentile(latencies_ms, 0.99), 3),
        max_ms=round(max(latencies_ms, default=0.0), 3),
        follower_lag_p99_ms=round(_percentile(lag, 0.99) * 1000, 3) if lag else None,
        lag_samples=len(lag),
        policy=sync,
        writes_per_group=per_group,
    )
