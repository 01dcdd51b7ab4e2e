"""Leaderless replication on real processes (issue #9): recorded histories for
R = W = 2 and R = W = 1 of N = 3, checked by the per-key checker, with their
throughput and latency.

Three local nodes, anti-entropy off (so only hints and read repair mend replicas);
four clients (three coordinating themselves, one through a node) read a key and write
it back with the context read, for ``--duration`` seconds; a replica is SIGKILLed for
the middle third and restarted. Then every hint is handed over, every key is read
from all replicas, and the history is checked: stale reads, lost writes.

    .venv/bin/python bench/leaderless.py --duration 30 --write docs/leaderless.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import replidb
from replidb.client.kv import KvClient
from replidb.testing.kv_history import HistoryWorker, final_state
from replidb.testing.local_cluster import LocalCluster, wait_until
from replidb.testing.sim_leaderless import Params, check_history, stale_reads

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from report import write_section  # noqa: E402

KEYS = 8


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(r: int, w: int, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(
            Path(tmp),
            extra=("--topology", "leaderless", "--anti-entropy-interval", "0",
                   "--replica-timeout-ms", "300"),
        )  # fmt: skip
        cluster.start_all()
        try:
            wait_until(
                lambda: all(
                    (s := cluster.status(n)) is not None and len(s.peers_connected) == 2
                    for n in cluster.members
                ),
                15,
                "three connected nodes",
            )
            conn = replidb.connect(cluster.addresses["n1"], autocommit=True, timeout=10)
            conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT)")
            conn.close()
            time.sleep(0.5)
            stop = threading.Event()
            clients = [KvClient(cluster.connect, replica_timeout=0.3) for _ in range(3)]
            clients.append(KvClient(cluster.addresses["n1"], via="node"))
            workers = [
                HistoryWorker(f"c{i}", c, KEYS, stop, r=r, w=w) for i, c in enumerate(clients)
            ]
            started = time.monotonic()
            for worker in workers:
                worker.start()
            time.sleep(duration / 3)
            cluster.kill("n3")
            print(f"  R={r} W={w}: n3 killed", flush=True)
            time.sleep(duration / 3)
            cluster.start("n3")
            print(f"  R={r} W={w}: n3 restarted", flush=True)
            time.sleep(duration / 3)
            stop.set()
            for worker in workers:
                worker.join(30)
            elapsed = time.monotonic() - started
            for client in clients:
                client.close()
            wait_until(
                lambda: all(
                    (s := cluster.status(n)) is not None and not sum(s.kv_hints.values())
                    for n in cluster.members
                ),
                30,
                "every hint handed over",
            )
            statuses = [cluster.status(n) for n in cluster.members]
            counters: dict[str, int] = {}
            for status in statuses:
                for name, value in (status.kv_counters if status else {}).items():
                    counters[name] = counters.get(name, 0) + value
            reader = KvClient(cluster.connect)
            final = final_state(reader, KEYS)
            reader.close()
        finally:
            cluster.stop_all()
    history = [e for worker in workers for e in worker.history]
    params = Params(nodes=3, n=3, r=r, w=w, sloppy=False, keys=KEYS, clients=4, loss=0.0,
                    max_delay=0, fault_rate=0.0)  # fmt: skip
    lost = [p for p in check_history(history, params, final) if "is lost" in p]
    reads = [e for e in history if e.kind == "read" and e.outcome == "ok"]
    writes = [e for e in history if e.kind == "write"]
    read_ms = [x for worker in workers for x in worker.latencies["read"]]
    write_ms = [x for worker in workers for x in worker.latencies["write"]]
    return {
        "r": r,
        "w": w,
        "reads": len(reads),
        "writes": sum(e.outcome == "ok" for e in writes),
        "unknown": sum(e.outcome == "unknown" for e in writes),
        "failed": sum(e.outcome == "failed" for e in writes)
        + sum(e.kind == "read" and e.outcome == "failed" for e in history),
        "stale": len(stale_reads(history)),
        "lost": len(lost),
        "siblings": sum(len(e.seen) > 1 for e in reads),
        "read_repairs": counters.get("read_repairs", 0),
        "hints": counters.get("hints_handed_over", 0),
        "ops_per_s": (len(reads) + len(writes)) / elapsed,
        "read_p50": _p(read_ms, 0.5),
        "read_p99": _p(read_ms, 0.99),
        "write_p50": _p(write_ms, 0.5),
        "write_p99": _p(write_ms, 0.99),
    }


def render(results: list[dict[str, Any]], duration: float) -> str:
    lines = [
        "### Recorded histories on real processes",
        "",
        f"`python bench/leaderless.py --duration {duration:g}` — {platform.node()}, "
        f"{platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}: three local nodes, N = 3, anti-entropy off, four "
        "clients (three coordinating themselves, one through a node) reading a key and "
        "writing it back with the context read; n3 SIGKILLed for the middle third, "
        "then restarted and handed its hints.",
        "",
        "| R, W | reads | writes acked | unknown | failed | stale reads | lost writes "
        "| sibling reads | read repairs | hints handed over | ops/s | read p50 / p99 ms "
        "| write p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in results:
        lines.append(
            f"| {x['r']}, {x['w']} | {x['reads']:,} | {x['writes']:,} | {x['unknown']} "
            f"| {x['failed']} | **{x['stale']}** | **{x['lost']}** | {x['siblings']} "
            f"| {x['read_repairs']} | {x['hints']} | {x['ops_per_s']:,.0f} "
            f"| {x['read_p50']:.1f} / {x['read_p99']:.1f} "
            f"| {x['write_p50']:.1f} / {x['write_p99']:.1f} |"
        )
    quorum = next(x for x in results if x["r"] == 2)
    single = next(x for x in results if x["r"] == 1)
    ratio = single["ops_per_s"] / quorum["ops_per_s"] if quorum["ops_per_s"] else float("nan")
    lines += [
        "",
        f"R = W = 1 ran {ratio:.2f} times the operations of R = W = 2 in the same time "
        f"(write p50 {single['write_p50']:.1f} vs {quorum['write_p50']:.1f} ms) and "
        f"answered {single['stale']} stale reads to quorum's {quorum['stale']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--write", type=Path, default=None, help="e.g. docs/leaderless.md")
    args = parser.parse_args()
    results = []
    for r, w in ((2, 2), (1, 1)):
        print(f"R={r} W={w}: {args.duration:g} s", flush=True)
        results.append(run(r, w, args.duration))
        print(f"  {results[-1]}", flush=True)
    section = render(results, args.duration)
    print(section)
    if args.write is not None:
        write_section(args.write, "leaderless-processes", section)
    if any(x["lost"] for x in results) or results[0]["stale"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
