"""A DB-API-shaped adapter, so that replidb's load generator (replidb/loadgen.py) drives a
key-value peer (bench/peers/redis.py, bench/peers/etcd.py) unchanged.

The cursor recognises exactly the statements the ``insert`` workload issues and maps each
to one request:

- ``CREATE TABLE ...``: nothing (a key-value store has no schema);
- ``INSERT INTO bench(client, v) VALUES (?, ?)``: one write of ``v`` (~100 bytes) under
  a key unique to this connection, ``bench:{client}:{connection}:{seq}``;
- ``INSERT INTO bench_probe(at) VALUES (?) RETURNING id``: one write of a probe key,
  returning its (client-side) number as the id;
- ``SELECT 1 FROM bench_probe WHERE id = ?``: reads the probe key on the store this
  connection talks to (a replica, for the lag probe): ``[(1,)]`` if there, else ``[]``.

Anything else raises ``UnsupportedStatement``, which is deliberately *not* among a
target's ``errors``: the generator would count those as failed requests and go on.

Also here: starting and stopping the peers' server processes, shared by both peers.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from replidb.node.process import die_with_parent

BENCH_INSERT = "INSERT INTO bench(client, v) VALUES (?, ?)"
PROBE_INSERT = "INSERT INTO bench_probe(at) VALUES (?) RETURNING id"
PROBE_SELECT = "SELECT 1 FROM bench_probe WHERE id = ?"


class KVError(Exception):
    """A request the store refused or could not answer (counted as a failed request)."""


class UnsupportedStatement(NotImplementedError):
    """SQL this adapter has no mapping for: the key-value peers run only ``insert``."""


class Store(Protocol):
    """One client connection to one server of the peer."""

    def write(self, key: str, value: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def close(self) -> None: ...


class KVCursor:
    def __init__(self, connection: KVConnection) -> None:
        self._connection = connection
        self._rows: list[tuple[int, ...]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> KVCursor:
        self._rows = self._connection.run(" ".join(sql.split()), params)
        return self

    def executemany(self, sql: str, seq_of_params: Sequence[Sequence[Any]]) -> KVCursor:
        raise UnsupportedStatement(
            f"executemany({sql!r}): the key-value peers run only the `insert` workload"
        )

    def fetchone(self) -> tuple[int, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[tuple[int, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def close(self) -> None:
        self._rows = []


class KVConnection:
    """What ``Target.connect()`` / ``replica_readers()`` return for a key-value peer."""

    _serials = itertools.count(1)  # tells apart connections that share a client number

    def __init__(self, store: Store, probe_ids: Iterator[int]) -> None:
        self._store = store
        self._probe_ids = probe_ids
        self._serial = next(self._serials)
        self._seq = itertools.count(1)

    def cursor(self) -> KVCursor:
        return KVCursor(self)

    def close(self) -> None:
        self._store.close()

    def run(self, sql: str, params: Sequence[Any]) -> list[tuple[int, ...]]:
        if sql.startswith("CREATE TABLE "):
            return []
        if sql == BENCH_INSERT:
            client, value = params
            self._store.write(f"bench:{client}:{self._serial}:{next(self._seq)}", str(value))
            return []
        if sql == PROBE_INSERT:
            probe_id = next(self._probe_ids)
            self._store.write(f"bench_probe:{probe_id}", str(params[0]))
            return [(probe_id,)]
        if sql == PROBE_SELECT:
            return [(1,)] if self._store.exists(f"bench_probe:{params[0]}") else []
        raise UnsupportedStatement(
            f"no key-value mapping for {sql!r}: the key-value peers run only the `insert` workload"
        )


class KVTarget:
    """A ``replidb.loadgen.Target`` over ``Store``s: subclasses say how to open one to
    the server that takes writes and one to each replica."""

    placeholder = "?"
    id_column = "KEY"  # never parsed: CREATE TABLE is a no-op here
    errors: tuple[type[BaseException], ...] = (KVError,)

    def __init__(self) -> None:
        self._probe_ids = itertools.count(1)  # shared by every connection of this target

    def primary_store(self) -> Store:
        raise NotImplementedError

    def replica_stores(self) -> list[Store]:
        raise NotImplementedError

    def connect(self) -> KVConnection:
        return KVConnection(self.primary_store(), self._probe_ids)

    def replica_readers(self) -> list[KVConnection]:
        return [KVConnection(store, self._probe_ids) for store in self.replica_stores()]


def spawn(
    command: list[str],
    log: Path,
    started: list[subprocess.Popen[bytes]],
    env: dict[str, str] | None = None,
) -> None:
    """Start a server with its output in ``log``, and note it in ``started``; it is sent
    SIGKILL by the kernel should this process die without stopping it."""
    with log.open("ab") as out:
        started.append(
            subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
        )


def stop_all(started: list[subprocess.Popen[bytes]]) -> None:
    """Stop every process in ``started`` by its PID: SIGTERM, then SIGKILL after 10 s."""
    for process in reversed(started):
        if process.poll() is None:
            process.terminate()
    for process in reversed(started):
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(
    what: str, ready: Callable[[], bool], started: list[subprocess.Popen[bytes]], timeout: float
) -> None:
    """Poll ``ready()`` (exceptions count as not ready) until true; fail early if one of
    ``started`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in started:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: {process.args[0]} exited ({process.returncode})")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not ready after {timeout:g} s")
