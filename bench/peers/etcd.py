"""An etcd 3.4 peer on loopback: a 3-member static cluster (Raft: a write is answered
once a majority has it in its fsynced log), loaded by replidb's own generator
(replidb/loadgen.py) through the key-value adapter in bench/peers/kv.py (``insert``
only).

    .venv/bin/python bench/peers/etcd.py --clients 64 --duration 10

Clients speak etcd's v3 API as JSON over HTTP (the gRPC gateway: ``POST /v3/kv/put``
and ``/v3/kv/range``, keys and values base64), one keep-alive ``http.client``
connection per client, so there is no gRPC dependency. Writers talk to the leader
(found with ``/v3/maintenance/status``); the lag probe reads its key on each follower
with a *serializable* range, which answers from that member's own state.

Installs Debian's etcd-server (apt-get, as root) if missing. The members run from a
temporary directory, not as the system service, and every one we started is stopped by
its PID on the way out.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# Run as a script, this folder heads sys.path (kept out, as in bench/peers/redis.py).
for _entry in [p for p in sys.path if Path(p or ".").resolve() == _HERE]:
    sys.path.remove(_entry)
sys.path.insert(0, str(_HERE.parents[1] / "src"))
sys.path.insert(0, str(_HERE.parent))

from peers.kv import KVError, KVTarget, spawn, stop_all, wait_for  # noqa: E402

from replidb.loadgen import run_bench  # noqa: E402
from replidb.testing.local_cluster import free_ports  # noqa: E402

ETCD = Path("/usr/bin/etcd")
MEMBERS = 3


def ensure_installed() -> None:
    if not ETCD.exists():
        print("installing etcd-server (apt-get) ...", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True, env=env)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdStore:
    """One keep-alive HTTP connection to one member's gRPC gateway."""

    def __init__(self, port: int) -> None:
        self._http = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            self._http.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = self._http.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self._http.close()  # the next request opens a fresh connection
            raise
        if response.status != 200:
            raise KVError(f"etcd {path}: HTTP {response.status}: {payload[:200]!r}")
        try:
            reply: dict[str, Any] = json.loads(payload)
        except ValueError:
            raise KVError(f"etcd {path}: not JSON: {payload[:200]!r}")
        return reply

    def write(self, key: str, value: str) -> None:
        self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def exists(self, key: str) -> bool:
        """Read at this member, from its own state (no round to the leader)."""
        reply = self.call("/v3/kv/range", {"key": _b64(key), "serializable": True})
        return bool(reply.get("kvs"))  # the gateway leaves out empty fields

    def close(self) -> None:
        self._http.close()


class EtcdTarget(KVTarget):
    """replidb.loadgen.Target for an etcd cluster: writes to its leader, probes read
    at each follower."""

    errors = (KVError, OSError, http.client.HTTPException)

    def __init__(self, clients: list[int]) -> None:
        super().__init__()
        self.clients = clients

    def leader(self) -> int:
        """The client port of the current leader."""
        for port in self.clients:
            status = _status(port)
            if status["leader"] == status["header"]["member_id"]:
                return port
        raise KVError("etcd: no member says it is the leader")

    def primary_store(self) -> EtcdStore:
        return EtcdStore(self.leader())

    def replica_stores(self) -> list[EtcdStore]:
        leader = self.leader()
        return [EtcdStore(port) for port in self.clients if port != leader]


def _status(port: int) -> dict[str, Any]:
    store = EtcdStore(port)
    try:
        return store.call("/v3/maintenance/status", {})
    finally:
        store.close()


def _healthy(clients: list[int]) -> bool:
    """Every member healthy, and all agree on one leader."""
    leaders = set()
    for port in clients:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/health")
            if json.loads(connection.getresponse().read()).get("health") != "true":
                return False
        finally:
            connection.close()
        leaders.add(_status(port).get("leader", "0"))
    return len(leaders) == 1 and "0" not in leaders


@contextlib.contextmanager
def etcd_cluster() -> Iterator[EtcdTarget]:
    """A 3-member static cluster on free loopback ports; all stopped afterwards."""
    ensure_installed()
    base = Path(tempfile.mkdtemp(prefix="replidb-peer-etcd-"))
    ports = free_ports(2 * MEMBERS)
    clients, peers = ports[:MEMBERS], ports[MEMBERS:]
    names = [f"m{i}" for i in range(MEMBERS)]
    cluster = ",".join(
        f"{name}=http://127.0.0.1:{port}" for name, port in zip(names, peers, strict=True)
    )
    started: list[subprocess.Popen[bytes]] = []
    try:
        for name, client, peer in zip(names, clients, peers, strict=True):
            _start(base, name, client, peer, cluster, started)
        wait_for("etcd cluster", lambda: _healthy(clients), started, timeout=30)
        yield EtcdTarget(clients)
    finally:
        stop_all(started)
        shutil.rmtree(base, ignore_errors=True)


def _start(
    base: Path,
    name: str,
    client: int,
    peer: int,
    cluster: str,
    started: list[subprocess.Popen[bytes]],
) -> None:
    command = [
        str(ETCD),
        "--name", name,
        "--data-dir", str(base / name),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", cluster,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", f"replidb-bench-{base.name}",
        "--logger", "zap",
        "--log-outputs", "stderr",
    ]  # fmt: skip
    env = dict(os.environ)
    if platform.machine() in ("aarch64", "arm64"):  # etcd 3.4 refuses to start otherwise
        env.setdefault("ETCD_UNSUPPORTED_ARCH", "arm64")
    spawn(command, base / f"{name}.log", started, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workload", default="insert", choices=["insert"])
    args = parser.parse_args()
    with etcd_cluster() as target:
        result = run_bench(target, args.workload, args.clients, args.duration)
    print(json.dumps(result.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
