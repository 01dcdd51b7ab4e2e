"""A Redis 7 peer on loopback: a primary and one replica (``--replicaof``), written to
asynchronously, or with ``WAIT 1`` after every write (the write is answered once the
replica has acknowledged it), loaded by replidb's own generator (replidb/loadgen.py)
through redis-py and the key-value adapter in bench/peers/kv.py (``insert`` only).

    .venv/bin/python bench/peers/redis.py --wait --clients 64 --duration 10

Durability: both servers run with ``appendonly yes``, ``appendfsync always`` and
``save ''``: every write is in the append-only file and fsynced before it is answered,
as a database that fsyncs each commit (replidb, PostgreSQL) does; no RDB snapshots.
With ``WAIT 1`` the replica has *received and applied* the write, not necessarily
fsynced it (Redis 7.0 has no WAITAOF). A write is one round trip: ``SET``, or ``SET``
and ``WAIT 1 1000`` pipelined; a WAIT that times out with no replica is a failed write.
The lag probe reads its key straight at the replica (``EXISTS``).

Installs what it needs if missing: Debian's redis-server (apt-get, as root) and redis-py
(pip, into this interpreter). The servers run from a temporary directory, not as the
system service, and every one we started is stopped by its PID on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# Run as a script, this folder heads sys.path, where this file would shadow redis-py.
for _entry in [p for p in sys.path if Path(p or ".").resolve() == _HERE]:
    sys.path.remove(_entry)
sys.path.insert(0, str(_HERE.parents[1] / "src"))
sys.path.insert(0, str(_HERE.parent))

from peers.kv import KVError, KVTarget, spawn, stop_all, wait_for  # noqa: E402

from replidb.loadgen import run_bench  # noqa: E402
from replidb.testing.local_cluster import free_ports  # noqa: E402

REDIS_SERVER = Path("/usr/bin/redis-server")
WAIT_TIMEOUT_MS = 1000


def ensure_installed() -> None:
    if not REDIS_SERVER.exists():
        print("installing redis-server (apt-get) ...", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    try:
        importlib.import_module("redis")
    except ImportError:
        print("installing redis-py (pip) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "redis>=5"], check=True)


class RedisStore:
    """One connection to one server; ``wait``: every write is followed by WAIT 1."""

    def __init__(self, port: int, wait: bool) -> None:
        import redis

        self._client = redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=10, single_connection_client=True
        )
        self._wait = wait

    def write(self, key: str, value: str) -> None:
        if not self._wait:
            self._client.set(key, value)
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, value)
        pipe.wait(1, WAIT_TIMEOUT_MS)
        _, acked = pipe.execute()
        if acked < 1:
            raise KVError(f"WAIT 1 {WAIT_TIMEOUT_MS}: no replica acknowledged {key!r}")

    def exists(self, key: str) -> bool:
        return bool(self._client.exists(key))

    def close(self) -> None:
        self._client.close()

    def info(self, section: str) -> dict[str, Any]:
        return dict(self._client.info(section))


class RedisTarget(KVTarget):
    """replidb.loadgen.Target for a Redis primary and its replica."""

    def __init__(self, primary: int, replicas: list[int], wait: bool) -> None:
        import redis

        super().__init__()
        self.errors = (redis.RedisError, KVError)
        self.primary = primary
        self.replicas = replicas
        self.wait = wait

    def primary_store(self) -> RedisStore:
        return RedisStore(self.primary, self.wait)

    def replica_stores(self) -> list[RedisStore]:
        return [RedisStore(port, wait=False) for port in self.replicas]


@contextlib.contextmanager
def redis_cluster(wait: bool) -> Iterator[RedisTarget]:
    """Primary + one replica on free loopback ports; all stopped afterwards."""
    ensure_installed()
    base = Path(tempfile.mkdtemp(prefix="replidb-peer-redis-"))
    primary, replica = free_ports(2)
    started: list[subprocess.Popen[bytes]] = []
    try:
        _start(base / "primary", primary, [], started)
        _start(base / "replica", replica, ["--replicaof", "127.0.0.1", str(primary)], started)
        target = RedisTarget(primary, [replica], wait)
        link = RedisStore(replica, wait=False)
        try:
            wait_for(
                "redis replica link",
                lambda: link.info("replication").get("master_link_status") == "up",
                started,
                timeout=30,
            )
        finally:
            link.close()
        yield target
    finally:
        stop_all(started)
        shutil.rmtree(base, ignore_errors=True)


def _start(
    directory: Path, port: int, extra: list[str], started: list[subprocess.Popen[bytes]]
) -> None:
    directory.mkdir()
    command = [
        str(REDIS_SERVER),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(directory),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        *extra,
    ]  # fmt: skip
    spawn(command, directory / "log", started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait", action="store_true", help="WAIT 1 after every write")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workload", default="insert", choices=["insert"])
    args = parser.parse_args()
    with redis_cluster(args.wait) as target:
        result = run_bench(target, args.workload, args.clients, args.duration)
    print(json.dumps(result.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
