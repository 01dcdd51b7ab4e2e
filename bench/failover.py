"""Failover benchmark (issue #3): how long from `kill -9 leader` to the first write the
new leader acknowledges, and how many needless elections heavy write load causes for
a few election timeouts. Real processes on loopback; results go to docs/benchmarks.md.

    .venv/bin/python bench/failover.py --kills 20 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from replidb.client.transport import Client
from replidb.errors import Error
from replidb.testing.local_cluster import LocalCluster
from replidb.transport import wire

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from report import write_section  # noqa: E402


def _create(cluster: LocalCluster) -> None:
    client = Client(cluster.connect, timeout=10)
    client.execute([wire.Statement("CREATE TABLE b(id INTEGER PRIMARY KEY, v TEXT)")], write=True)
    client.close()


def timing_options(election_ms: int) -> tuple[str, ...]:
    """Options for an election timeout; heartbeats stay a third of it at most."""
    heartbeat = max(10, min(100, election_ms // 3))
    return (
        "--election-timeout-ms",
        str(election_ms),
        "--heartbeat-ms",
        str(heartbeat),
        "--tick-ms",
        str(max(5, heartbeat // 2)),
    )


def failover_times(kills: int, mode: str = "kill", election_ms: int = 1000) -> list[float]:
    """``kill``: SIGKILL (its connections close: followers notice at once).
    ``pause``: SIGSTOP (a hung leader: nothing closes, only the timeout tells)."""
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), extra=timing_options(election_ms))
        cluster.start_all()
        try:
            cluster.wait_for_leader(timeout=15)
            _create(cluster)
            client = Client(cluster.connect, timeout=15, attempt_timeout=0.5)
            for round_ in range(1, kills + 1):
                leader = cluster.wait_for_leader(timeout=15)
                if mode == "kill":
                    cluster.kill(leader)
                else:
                    cluster.pause(leader)
                killed = time.monotonic()
                while True:  # writes until one is acknowledged by somebody else
                    try:
                        reply = client.request(
                            [wire.Statement("INSERT INTO b(v) VALUES ('x')")], write=True
                        )
                    except Error:
                        continue
                    if reply.node != leader:
                        break
                took = time.monotonic() - killed
                times.append(took)
                print(
                    f"  {mode} {round_:2d}: {leader} stopped, new leader acknowledged after "
                    f"{took * 1000:.0f} ms",
                    flush=True,
                )
                if mode == "kill":
                    cluster.start(leader)
                else:
                    cluster.resume(leader)  # it wakes up deposed, and follows
                cluster.wait_converged("b", nodes=cluster.ids, timeout=30)
            client.close()
        finally:
            cluster.stop_all()
    return times


def needless_elections(
    election_ms: int, seconds: float, writers: int, stall_ms: int = 0
) -> tuple[int, int]:
    """Elections (term changes after the first leader) while nothing fails, and the
    writes acknowledged meanwhile. ``stall_ms``: once a second the leader stops for
    that long (SIGSTOP/SIGCONT), like a GC pause or a slow disk — it is not dead."""
    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), extra=timing_options(election_ms))
        cluster.start_all()
        try:
            leader = cluster.wait_for_leader(timeout=15)
            _create(cluster)
            status = cluster.status(leader)
            first_term = status.term if status else 0
            stop = threading.Event()
            counts = [0] * writers

            def write(slot: int) -> None:
                client = Client(cluster.connect, timeout=10)
                while not stop.is_set():
                    try:
                        client.execute(
                            [wire.Statement("INSERT INTO b(v) VALUES (?)", ["y" * 100])],
                            write=True,
                        )
                        counts[slot] += 1
                    except Error:
                        pass
                client.close()

            threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
            for thread in threads:
                thread.start()
            ends = time.monotonic() + seconds
            while time.monotonic() < ends:
                time.sleep(max(0.0, min(1.0, ends - time.monotonic())))
                if stall_ms and time.monotonic() < ends:
                    current = next(
                        (n for n in cluster.ids if (s := cluster.status(n)) and s.role == "leader"),
                        None,
                    )
                    if current is not None:
                        cluster.pause(current)
                        time.sleep(stall_ms / 1000)
                        cluster.resume(current)
            stop.set()
            for thread in threads:
                thread.join(20)
            terms = [s.term for s in (cluster.status(n) for n in cluster.ids) if s]
            return max(terms) - first_term, sum(counts)
        finally:
            cluster.stop_all()


def _ms(values: list[float]) -> str:
    return (
        f"median **{statistics.median(values) * 1000:.0f} ms**, "
        f"min {min(values) * 1000:.0f} ms, max **{max(values) * 1000:.0f} ms**"
    )


@dataclass
class TimeoutRow:
    """One election timeout's side of the trade-off."""

    hung_failover: list[float]
    quiet: tuple[int, int]  # (elections, writes) with nothing wrong
    stalled: tuple[int, int]  # (elections, writes) with a short leader stall every second


def report(
    times: dict[str, list[float]],
    rows: dict[int, TimeoutRow],
    seconds: float,
    writers: int,
    stall_ms: int,
) -> str:
    lines = [
        "## Failover (bench/failover.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python "
        f"{platform.python_version()}, 3 real `replidb serve` processes on loopback "
        "(one 2-core machine), pre-vote and check-quorum on. Failover time is from "
        "stopping the leader to the first write acknowledged by a new leader, seen by a "
        "client that retries a write (0.5 s per attempt, which floors the hung-leader "
        "figures) until another node answers.",
        "",
        "At default settings (heartbeat 100 ms, election timeout 1 s, randomized to [1 s, 2 s)):",
        "",
        f"- **leader killed** (SIGKILL), {len(times['kill'])} times: {_ms(times['kill'])}. "
        "Its TCP connections close; the followers see that, stop trusting its lease and "
        "campaign within a quarter of an election timeout.",
        f"- **leader hung** (SIGSTOP, later SIGCONT), {len(times['pause'])} times: "
        f"{_ms(times['pause'])}. Nothing closes: only the election timeout detects it.",
        "",
        "**Short vs long election timeouts.** Hung-leader failover is what the timeout "
        f"buys; elections are what it costs. {writers} closed-loop writers for "
        f"{seconds:.0f} s, once with nothing wrong and once with the leader stalled for "
        f"{stall_ms} ms every second (SIGSTOP/SIGCONT: a GC pause, a slow disk, a busy "
        "core — the leader is not dead). Heartbeat = min(100 ms, timeout / 3).",
        "",
        "| election timeout | hung-leader failover (median / max) | elections, quiet "
        f"| writes, quiet | elections, {stall_ms} ms stalls | writes, stalls |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for election_ms, row in sorted(rows.items()):
        hung = row.hung_failover
        lines.append(
            f"| {election_ms} ms | {statistics.median(hung) * 1000:.0f} / "
            f"{max(hung) * 1000:.0f} ms | {row.quiet[0]} | {row.quiet[1]:,} "
            f"| {row.stalled[0]} | {row.stalled[1]:,} |"
        )
    lines += [
        "",
        "Reading it: a timeout shorter than the pauses a healthy leader can suffer turns "
        "each pause into an election (writes stop for the election, and any async writes "
        "the old leader acknowledged meanwhile are discarded); a long timeout rides the "
        "pauses out but leaves a hung leader in place longer. A crashed leader is noticed "
        "by its closed connections, whatever the timeout.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--hangs", type=int, default=5, help="hung-leader runs per timeout")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--stall-ms", type=int, default=250)
    parser.add_argument("--timeouts", default="150,300,1000")
    parser.add_argument("--write", type=Path, help="update this markdown file's section")
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    for mode in ("kill", "pause"):
        print(f"failover: {args.kills} x {mode} the leader", flush=True)
        times[mode] = failover_times(args.kills, mode)
        print(_ms(times[mode]).replace("*", ""), flush=True)
    rows: dict[int, TimeoutRow] = {}
    for election_ms in (int(t) for t in args.timeouts.split(",")):
        print(f"election timeout {election_ms} ms ...", flush=True)
        rows[election_ms] = TimeoutRow(
            failover_times(args.hangs, "pause", election_ms),
            needless_elections(election_ms, args.seconds, args.writers),
            needless_elections(election_ms, args.seconds, args.writers, args.stall_ms),
        )
        print(f"  {rows[election_ms]}", flush=True)
    section = report(times, rows, args.seconds, args.writers, args.stall_ms)
    print(section)
    if args.write:
        write_section(args.write, "failover", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
