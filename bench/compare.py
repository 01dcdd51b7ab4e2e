"""replidb against PostgreSQL on this machine, in one run, with one load generator
(replidb/loadgen.py): single-row inserts, replidb's `quorum` against PostgreSQL's
synchronous `ANY 1 (s1, s2)`, and `async` against async, at 1 and 64 clients. Each pair
runs back to back (replidb, then PostgreSQL, then again in the other order) and the
ratio replidb/PostgreSQL is printed; results go to docs/benchmarks.md.

    .venv/bin/python bench/compare.py --duration 10 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from postgres import postgres_cluster
from report import publish

from replidb.loadgen import BenchResult, local_cluster, run_bench

PAIRS = [("quorum", True), ("async", False)]  # (replidb policy, PostgreSQL synchronous)
CLIENTS = (1, 64)


def replidb_run(policy: str, clients: int, duration: float) -> BenchResult:
    with local_cluster(3, policy) as addresses:
        return run_bench(addresses, "insert", clients, duration, policy)


def postgres_run(sync: bool, clients: int, duration: float) -> BenchResult:
    with postgres_cluster(sync) as target:
        return run_bench(target, "insert", clients, duration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--write", type=Path, default=None, help="docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    for policy, sync in PAIRS:
        for clients in CLIENTS:
            ours: list[BenchResult] = []
            theirs: list[BenchResult] = []
            for order in (("replidb", "peer"), ("peer", "replidb")):  # drift hits both alike
                for who in order:
                    if who == "replidb":
                        ours.append(replidb_run(policy, clients, args.duration))
                    else:
                        theirs.append(postgres_run(sync, clients, args.duration))
            a = statistics.mean(r.writes_per_s for r in ours)
            b = statistics.mean(r.writes_per_s for r in theirs)
            p50_a = statistics.mean(r.p50_ms for r in ours)
            p50_b = statistics.mean(r.p50_ms for r in theirs)
            lag_a = max((r.follower_lag_p99_ms or 0.0) for r in ours)
            lag_b = max((r.follower_lag_p99_ms or 0.0) for r in theirs)
            peer = "PostgreSQL sync ANY 1" if sync else "PostgreSQL async"
            row = (policy, peer, clients, a, b, a / b if b else 0.0, p50_a, p50_b, lag_a, lag_b)
            rows.append(row)
            print(
                f"{policy} vs {peer}, {clients} clients: {a:,.0f} vs {b:,.0f} writes/s "
                f"(ratio {row[5]:.2f}); p50 {p50_a:.2f} vs {p50_b:.2f} ms; "
                f"lag p99 {lag_a:.1f} vs {lag_b:.1f} ms",
                flush=True,
            )
    lines = [
        "## replidb against PostgreSQL (`bench/compare.py`)",
        "",
        f"Single-row inserts, one Python closed-loop generator (replidb/loadgen.py) for "
        f"both, {args.duration:g} s measured per run, each pair run twice in alternating "
        f"order (means shown). replidb: 3 local nodes, logical stream. PostgreSQL 15: a "
        f"primary and two streaming standbys on loopback (bench/peers/postgres.py). "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {datetime.date.today().isoformat()}. "
        f"Command: `python bench/compare.py --duration {args.duration:g} --write "
        f"docs/benchmarks.md`.",
        "",
        "| replidb | peer | clients | replidb writes/s | peer writes/s | ratio "
        "| p50 ms (replidb / peer) | lag p99 ms (replidb / peer) |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for policy, peer, clients, a, b, ratio, p50_a, p50_b, lag_a, lag_b in rows:
        lines.append(
            f"| {policy} | {peer} | {clients} | {a:,.0f} | {b:,.0f} | **{ratio:.2f}** "
            f"| {p50_a:.2f} / {p50_b:.2f} | {lag_a:.1f} / {lag_b:.1f} |"
        )
    publish("\n".join(lines), args.write, "compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
