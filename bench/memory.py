"""Memory under sustained load (issue #7): does a node's RSS stay flat, and does a
follower that stops answering grow the leader's memory beyond its bounded queues?

Two runs on a fresh 3-node `quorum` cluster each, 64 closed-loop clients inserting
~100-byte rows for ``--duration`` seconds:

- ``all up``: every node's RSS is sampled every 5 s;
- ``one follower stopped``: a follower is SIGSTOPped for the whole run (it keeps its
  sockets open and answers nothing — the worst case for the leader's send queue, as a
  dead one would close its connection); the other two still form a quorum.

RSS is read from /proc (Linux). "Growth" compares the mean of the last minute with the
mean of the first minute after a 30 s warm-up (shorter runs use fifths of the run).

    .venv/bin/python bench/memory.py --duration 600 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import publish

from replidb.loadgen import run_bench
from replidb.testing.local_cluster import LocalCluster

WARMUP_S = 30.0
SAMPLE_S = 5.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(duration: float, stop_follower: bool) -> dict[str, list[tuple[float, float]]]:
    """One run; per node (leader marked *, stopped follower marked !), (t, RSS MB)."""
    with tempfile.TemporaryDirectory(prefix="replidb-memory-") as tmp:
        cluster = LocalCluster(Path(tmp), nodes=3, extra=("--sync", "quorum"))
        cluster.start_all()
        try:
            leader = cluster.wait_for_leader(timeout=20)
            stopped = next(n for n in cluster.members if n != leader) if stop_follower else None
            if stopped is not None:
                cluster.pause(stopped)
            labels = {
                n: n + ("*" if n == leader else "!" if n == stopped else "")
                for n in cluster.members
            }
            samples: dict[str, list[tuple[float, float]]] = {labels[n]: [] for n in labels}
            done = threading.Event()
            started = time.monotonic()

            def sample() -> None:
                while not done.wait(SAMPLE_S):
                    now = time.monotonic() - started
                    for node, label in labels.items():
                        samples[label].append((now, rss_mb(cluster.procs[node].pid)))
                    print(
                        f"  {now:5.0f}s "
                        + "  ".join(f"{label} {s[-1][1]:.1f} MB" for label, s in samples.items()),
                        file=sys.stderr,
                        flush=True,
                    )

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            result = run_bench(cluster.connect, "insert", 64, duration, "quorum")
            done.set()
            sampler.join()
            print(
                f"  {result.writes_per_s:,.0f} writes/s, {result.errors} errors",
                file=sys.stderr,
                flush=True,
            )
            return samples
        finally:
            cluster.stop_all()


def growth(points: list[tuple[float, float]], duration: float) -> tuple[float, float, float]:
    """(early MB, late MB, growth %) over the measured part of one node's samples."""
    window = 60.0 if duration >= 240 else duration / 5
    start = min(WARMUP_S, duration / 5)
    early = [mb for t, mb in points if start <= t < start + window] or [points[0][1]]
    late = [mb for t, mb in points if t >= points[-1][0] - window] or [points[-1][1]]
    a, b = statistics.mean(early), statistics.mean(late)
    return a, b, (b - a) / a * 100 if a else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--write", type=Path, default=None, help="docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    for name, stop in (("all up", False), ("one follower stopped", True)):
        print(f"{name}: {args.duration:g} s", file=sys.stderr, flush=True)
        samples = run(args.duration, stop)
        for label, points in samples.items():
            if points:
                early, late, pct = growth(points, args.duration)
                peak = max(mb for _, mb in points)
                rows.append((name, label, early, late, pct, peak))
    lines = [
        "## Memory under sustained load (`bench/memory.py`)",
        "",
        f"3 local nodes, `quorum`, 64 clients inserting for {args.duration:g} s per run; "
        f"RSS every {SAMPLE_S:g} s; early = mean of the first minute after "
        f"{WARMUP_S:g} s of warm-up, late = mean of the last minute (fifths of the run "
        f"when shorter than 4 minutes). Node * leads; node ! was SIGSTOPped for the "
        f"whole run (open sockets, no answers). {platform.machine()}, {os.cpu_count()} "
        f"CPUs, {datetime.date.today().isoformat()}. Command: `python bench/memory.py "
        f"--duration {args.duration:g} --write docs/benchmarks.md`.",
        "",
        "| run | node | early RSS MB | late RSS MB | growth | peak MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, label, early, late, pct, peak in rows:
        lines.append(f"| {name} | {label} | {early:.1f} | {late:.1f} | {pct:+.1f}% | {peak:.1f} |")
    publish("\n".join(lines), args.write, "memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
