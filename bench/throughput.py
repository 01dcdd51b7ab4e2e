"""Throughput and latency of replidb itself (issue #7), with `replidb bench --local 3`:
single-row inserts at 1 and 64 clients under async and quorum, plus the batch and
read-mix workloads; results go to docs/benchmarks.md. Peers (PostgreSQL, Redis, etcd)
on the same machine: bench/compare.py.

    .venv/bin/python bench/throughput.py --duration 10 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import publish

BIN = Path(sys.executable).parent
RUNS = [  # (workload, clients, policy)
    ("insert", 1, "async"),
    ("insert", 1, "quorum"),
    ("insert", 64, "async"),
    ("insert", 64, "quorum"),
    ("batch", 16, "quorum"),
    ("read-mix", 64, "quorum"),
    ("hot-update", 64, "quorum"),
]


def bench(workload: str, clients: int, policy: str, duration: float) -> dict[str, object]:
    command = [
        str(BIN / "replidb"), "bench", "--local", "3", "--workload", workload,
        "--concurrency", str(clients), "--sync", policy, "--duration", str(duration), "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["command"] = " ".join(["replidb", *command[1:]])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--write", type=Path, default=None, help="docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    for workload, clients, policy in RUNS:
        result = bench(workload, clients, policy, args.duration)
        print(json.dumps(result), flush=True)
        rows.append(result)
    lines = [
        "## Throughput and latency (`bench/throughput.py`)",
        "",
        f"3 local nodes (`replidb bench --local 3`, logical stream), closed-loop Python "
        f"clients in one process, {args.duration:g} s measured after 1 s of warm-up; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{datetime.date.today().isoformat()}. Command: "
        f"`python bench/throughput.py --duration {args.duration:g} --write docs/benchmarks.md`.",
        "",
        "| workload | clients | policy | writes/s | reads/s | p50 ms | p99 ms | max ms "
        "| follower lag p99 ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lag = r["follower_lag_p99_ms"]
        lines.append(
            f"| {r['workload']} | {r['concurrency']} | {r['policy']} | {r['writes_per_s']:,} "
            f"| {r['reads_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
            f"| {'-' if lag is None else lag} |"
        )
    lines += [
        "",
        "Batch rows/s: "
        + ", ".join(
            f"{r['rows_per_s']:,} ({r['concurrency']} clients, {r['policy']})"
            for r in rows
            if r["workload"] == "batch"
        )
        + ".",
        "",
        "Compared with PostgreSQL, Redis and etcd on the same machine: the next section "
        "(`bench/compare.py`).",
    ]
    publish("\n".join(lines), args.write, "throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
