"""Real `replidb serve` processes on loopback, for tests and benchmarks that kill and
restart nodes.

Every process started here is ended in ``stop_all`` (test fixtures call it even when
the test fails), and only by the PID we got when we started it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import replidb
from replidb.client.transport import Client, probe_status
from replidb.errors import Error
from replidb.node.process import die_with_parent
from replidb.transport import wire

__all__ = ["LocalCluster", "NumberedWriter", "free_ports", "pid_alive", "wait_until"]


def free_ports(count: int) -> list[int]:
    """``count`` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range
    (32768+), so that no client socket can take one before our node binds it."""
    rng = random.Random()  # which block: a fresh, unseeded choice per call is the point
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - count)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                probe = socket.socket()
                held.append(probe)
                probe.bind(("127.0.0.1", port))
            return list(range(base, base + count))
        except OSError:
            continue
        finally:
            for probe in held:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


class LocalCluster:
    def __init__(
        self,
        base: Path,
        nodes: int = 3,
        extra: tuple[str, ...] = (),
        node_extra: dict[str, tuple[str, ...]] | None = None,
        node_env: dict[str, dict[str, str]] | None = None,
        spares: int = 0,
    ) -> None:
        self.base = base
        self.ids = [f"n{i + 1}" for i in range(nodes + spares)]
        # The first ``nodes`` form the cluster; spares start with --join, outside it.
        self.members = self.ids[:nodes]
        ports = free_ports(nodes + spares)
        self.addresses = {
            node: f"127.0.0.1:{port}" for node, port in zip(self.ids, ports, strict=True)
        }
        self.extra = extra
        self.node_extra = node_extra or {}  # options for one node only
        self.node_env = node_env or {}  # environment for one node only (fault injection)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def connect(self) -> str:
        return ",".join(self.addresses[node] for node in self.members)

    def log(self, node: str) -> str:
        path = self.base / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, node: str) -> None:
        spare = node not in self.members
        peers = ",".join(f"{p}={self.addresses[p]}" for p in self.members if p != node)
        command = [
            sys.executable,
            "-m",
            "replidb",
            "serve",
            "--node-id",
            node,
            "--data",
            str(self.base / node),
            "--listen",
            self.addresses[node],
            "--peers",
            peers,
            *self.extra,
            *self.node_extra.get(node, ()),
            *(("--join",) if spare else ()),
        ]
        with (self.base / f"{node}.log").open("ab") as log_file:
            self.procs[node] = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=die_with_parent,
                env={**os.environ, **self.node_env.get(node, {})},
            )

    def start_all(self) -> None:
        for node in self.members:
            self.start(node)

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(sig)
        proc.wait(10)

    def pause(self, node: str) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a stalled host)."""
        self.procs[node].send_signal(signal.SIGSTOP)

    def resume(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def alive(self, node: str) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def status(self, node: str) -> wire.NodeStatus | None:
        try:
            return probe_status(self.addresses[node], 1.0)
        except Error:
            return None

    def wait_for_leader(self, timeout: float = 10.0, exclude: str | None = None) -> str:
        """The id of a leader that every live node agrees on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [self.status(n) for n in self.ids if self.alive(n)]
            leaders = {s.leader for s in statuses if s is not None}
            if len(leaders) == 1 and None not in leaders and all(statuses):
                leader = leaders.pop()
                assert leader is not None
                if leader != exclude and any(s and s.role == "leader" for s in statuses):
                    return leader
            time.sleep(0.05)
        raise AssertionError(f"no agreed leader within {timeout}s: {self._describe()}")

    def query(self, node: str, sql: str, timeout: float = 5.0) -> list[list[Any]]:
        """A read served by exactly this node (no failover to others)."""
        client = Client(self.addresses[node], timeout=timeout)
        try:
            return client.execute([wire.Statement(sql)], write=False)[0].rows
        finally:
            client.close()

    def checksum(self, node: str, table: str, key: str = "id") -> str:
        rows = self.query(node, f"SELECT * FROM {table} ORDER BY {key}")
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    def wait_converged(
        self, table: str, nodes: list[str] | None = None, timeout: float = 20.0, key: str = "id"
    ) -> str:
        """Wait until every node's table checksum is the same; return it."""
        deadline = time.monotonic() + timeout
        nodes = nodes or [n for n in self.ids if self.alive(n)]
        sums: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            for node in nodes:
                try:
                    sums[node] = self.checksum(node, table, key)
                except Error:
                    sums[node] = None
            if len(set(sums.values())) == 1 and None not in sums.values():
                return next(iter(sums.values()))  # type: ignore[return-value]
            time.sleep(0.1)
        raise AssertionError(f"{table} did not converge: {sums}; {self._describe()}")

    def _describe(self) -> str:
        parts = []
        for node in self.ids:
            status = self.status(node) if self.alive(node) else None
            parts.append(f"{node}: {status!r}" if status else f"{node}: down")
        return "; ".join(parts)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class NumberedWriter(threading.Thread):
    """Inserts rows 1, 2, 3, ... into ``table(n)`` one at a time, and records each
    outcome: acknowledged (with when), unknown, failed (nothing applied), or any other
    error (a retried write that hit its own earlier copy would be a UNIQUE error)."""

    def __init__(self, connect: str, table: str, timeout: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.conn = replidb.connect(connect, timeout=timeout, autocommit=True)
        self.sql = f"INSERT INTO {table}(n) VALUES (?)"
        self.acked: dict[int, float] = {}
        self.unknown: set[int] = set()
        self.failed: set[int] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        cursor = self.conn.cursor()
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                cursor.execute(self.sql, (n,))
                self.acked[n] = time.monotonic()
            except replidb.OutcomeUnknown:
                self.unknown.add(n)
            except replidb.Unavailable:
                self.failed.add(n)
                time.sleep(0.05)
            except Error as exc:
                self.errors.append(f"{n}: {type(exc).__name__}: {exc}")
        self.conn.close()

    def longest_gap_after(self, moment: float) -> float:
        """The longest time without an acknowledgement, from ``moment`` on."""
        times = [moment, *sorted(t for t in self.acked.values() if t >= moment)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
