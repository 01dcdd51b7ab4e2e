"""replidb against real peers on this machine, in one run, with one load generator
(replidb/loadgen.py): single-row inserts at 1 and 64 clients, each replidb write policy
against the peer setting that promises the same:

- PostgreSQL 15 (bench/peers/postgres.py): `quorum` against synchronous
  `ANY 1 (s1, s2)`, `async` against async streaming;
- Redis 7 (bench/peers/redis.py): `quorum` against `WAIT 1` after every write, `async`
  against plain async replication;
- etcd 3.4 (bench/peers/etcd.py): `quorum` against its 3-member Raft cluster.

Each pair runs back to back (replidb, then the peer, then again in the other order) and
the ratio replidb/peer of writes/s is printed; results go to docs/benchmarks.md.

    .venv/bin/python bench/compare.py --duration 10 --write docs/benchmarks.md
    .venv/bin/python bench/compare.py --peer redis --clients 1,64 --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # report, and the peers package

from peers.etcd import etcd_cluster
from peers.postgres import postgres_cluster
from peers.redis import redis_cluster
from report import publish

from replidb.loadgen import BenchResult, Target, local_cluster, run_bench

PeerFactory = Callable[[], contextlib.AbstractContextManager[Target]]

# peer name -> [(replidb policy, peer label, peer context factory)]
PEERS: dict[str, list[tuple[str, str, PeerFactory]]] = {
    "postgres": [
        ("quorum", "PostgreSQL sync ANY 1", functools.partial(postgres_cluster, True)),
        ("async", "PostgreSQL async", functools.partial(postgres_cluster, False)),
    ],
    "redis": [
        ("quorum", "Redis WAIT 1", functools.partial(redis_cluster, True)),
        ("async", "Redis async", functools.partial(redis_cluster, False)),
    ],
    "etcd": [
        ("quorum", "etcd (Raft)", etcd_cluster),
    ],
}

# How each peer is set up, for the paragraph above the table.
SETTINGS = {
    "postgres": (
        "PostgreSQL 15: a primary and two streaming standbys (bench/peers/postgres.py), "
        "`synchronous_commit = on`; sync is `synchronous_standby_names = 'ANY 1 (s1, s2)'`."
    ),
    "redis": (
        "Redis 7.0: a primary and one replica (bench/peers/redis.py), both with "
        "`appendonly yes`, `appendfsync always` (an fsync per write) and no RDB "
        "snapshots; `WAIT 1` is `SET` and `WAIT 1 1000` pipelined, answered once the "
        "replica has applied the write (not necessarily fsynced it: 7.0 has no WAITAOF)."
    ),
    "etcd": (
        "etcd 3.4: a 3-member cluster (bench/peers/etcd.py), written at the leader, which "
        "answers once a majority has the entry in its fsynced log; clients speak JSON "
        "over HTTP to its gRPC gateway, one keep-alive connection each, and the lag "
        "probe reads serializably at each follower."
    ),
}
KV_PEERS = {"redis": "Redis", "etcd": "etcd"}  # driven through bench/peers/kv.py


@dataclass
class Row:
    policy: str
    peer: str
    clients: int
    ours: float  # writes/s, mean of the runs
    theirs: float
    p50_ours: float
    p50_theirs: float
    lag_ours: float  # follower lag p99 ms, worst of the runs
    lag_theirs: float

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs if self.theirs else 0.0


def replidb_run(policy: str, clients: int, duration: float) -> BenchResult:
    with local_cluster(3, policy) as addresses:
        return run_bench(addresses, "insert", clients, duration, policy)


def peer_run(factory: PeerFactory, clients: int, duration: float) -> BenchResult:
    with factory() as target:
        return run_bench(target, "insert", clients, duration)


def compare(policy: str, peer: str, factory: PeerFactory, clients: int, duration: float) -> Row:
    """replidb, peer, peer, replidb: drift over the run hits both alike."""
    ours: list[BenchResult] = []
    theirs: list[BenchResult] = []
    for order in (("replidb", "peer"), ("peer", "replidb")):
        for who in order:
            if who == "replidb":
                ours.append(replidb_run(policy, clients, duration))
            else:
                theirs.append(peer_run(factory, clients, duration))
    return Row(
        policy,
        peer,
        clients,
        ours=statistics.mean(r.writes_per_s for r in ours),
        theirs=statistics.mean(r.writes_per_s for r in theirs),
        p50_ours=statistics.mean(r.p50_ms for r in ours),
        p50_theirs=statistics.mean(r.p50_ms for r in theirs),
        lag_ours=max((r.follower_lag_p99_ms or 0.0) for r in ours),
        lag_theirs=max((r.follower_lag_p99_ms or 0.0) for r in theirs),
    )


def kv_note(peers: list[str]) -> str:
    kv = [name for name in peers if name in KV_PEERS]
    if not kv:
        return ""
    names = " and ".join(KV_PEERS[name] for name in kv)
    return (
        f" {names} {'is' if len(kv) == 1 else 'are'} loaded through bench/peers/kv.py, "
        f"which makes each insert one write of the value under a fresh key."
    )


def section(rows: list[Row], peers: list[str], args: argparse.Namespace) -> str:
    command = (
        f"python bench/compare.py --peer {args.peer} --clients {args.clients} "
        f"--duration {args.duration:g} --write docs/benchmarks.md"
    )
    lines = [
        "## replidb against real peers (`bench/compare.py`)",
        "",
        f"Single-row inserts of ~100-byte values, one Python closed-loop generator "
        f"(replidb/loadgen.py) for all, {args.duration:g} s measured per run, each pair run "
        f"twice in alternating order (means shown; lag is the worse run). The ratio is "
        f"replidb writes/s over the peer's. replidb: 3 local nodes, logical stream; "
        f"`quorum` waits for one follower of two, `async` for none. "
        + " ".join(SETTINGS[name] for name in peers)
        + kv_note(peers)
        + f" All on loopback, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {datetime.date.today().isoformat()}. "
        f"Command: `{command}`.",
        "",
        "| replidb | peer | clients | replidb writes/s | peer writes/s | ratio "
        "| p50 ms (replidb / peer) | lag p99 ms (replidb / peer) |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.policy} | {r.peer} | {r.clients} | {r.ours:,.0f} | {r.theirs:,.0f} "
            f"| **{r.ratio:.2f}** | {r.p50_ours:.2f} / {r.p50_theirs:.2f} "
            f"| {r.lag_ours:.1f} / {r.lag_theirs:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peer", choices=[*PEERS, "all"], default="all")
    parser.add_argument("--clients", default="1,64", help="comma-separated, e.g. 1,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--write", type=Path, default=None, help="docs/benchmarks.md")
    args = parser.parse_args()
    peers = list(PEERS) if args.peer == "all" else [args.peer]
    client_counts = [int(n) for n in args.clients.split(",") if n.strip()]
    rows = []
    for name in peers:
        for policy, peer, factory in PEERS[name]:
            for clients in client_counts:
                row = compare(policy, peer, factory, clients, args.duration)
                rows.append(row)
                print(
                    f"{policy} vs {peer}, {clients} clients: {row.ours:,.0f} vs "
                    f"{row.theirs:,.0f} writes/s (ratio {row.ratio:.2f}); p50 "
                    f"{row.p50_ours:.2f} vs {row.p50_theirs:.2f} ms; lag p99 "
                    f"{row.lag_ours:.1f} vs {row.lag_theirs:.1f} ms",
                    flush=True,
                )
    publish(section(rows, peers, args), args.write, "compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
