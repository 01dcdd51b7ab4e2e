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
from pathlib import Path

from replidb.client.transport import Client
from replidb.errors import Error
from replidb.testing.local_cluster import LocalCluster
from replidb.transport import wire

ROOT = Path(__file__).resolve().parent.parent
MARK_BEGIN = "<!-- failover:begin -->"
MARK_END = "<!-- failover:end -->"


def _create(cluster: LocalCluster) -> None:
    client = Client(cluster.connect, timeout=10)
    client.execute([wire.Statement("CREATE TABLE b(id INTEGER PRIMARY KEY, v TEXT)")], write=True)
    client.close()


def failover_times(kills: int, mode: str = "kill") -> list[float]:
    """``kill``: SIGKILL (its connections close: followers notice at once).
    ``pause``: SIGSTOP (a hung leader: nothing closes, only the timeout tells)."""
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(Path(tmp))
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


def needless_elections(election_ms: int, seconds: float, writers: int) -> tuple[int, int]:
    """Elections (term changes after the first leader) with no fault injected, and the
    number of writes acknowledged meanwhile."""
    heartbeat = max(10, min(100, election_ms // 3))
    extra = (
        "--election-timeout-ms",
        str(election_ms),
        "--heartbeat-ms",
        str(heartbeat),
        "--tick-ms",
        str(max(5, heartbeat // 2)),
    )
    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), extra=extra)
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
            time.sleep(seconds)
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


def report(
    times: dict[str, list[float]],
    elections: dict[int, tuple[int, int]],
    seconds: float,
    writers: int,
) -> str:
    lines = [
        MARK_BEGIN,
        "## Failover (bench/failover.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python "
        f"{platform.python_version()}, 3 real `replidb serve` processes on loopback, "
        "default settings (heartbeat 100 ms, election timeout 1 s randomized in [1 s, 2 s), "
        "pre-vote and check-quorum on).",
        "",
        "Time from stopping the leader to the first write acknowledged by a new leader, "
        "measured by a client that retries a write until another node answers it:",
        "",
        f"- **leader killed** (SIGKILL), {len(times['kill'])} times: {_ms(times['kill'])}. "
        "Its TCP connections close; the followers see that, stop trusting its lease and "
        "campaign within a quarter of an election timeout.",
        f"- **leader hung** (SIGSTOP, later SIGCONT), {len(times['pause'])} times: "
        f"{_ms(times['pause'])}. Nothing closes: only the election timeout (1 s, "
        "randomized to [1 s, 2 s); the first follower to time out campaigns) detects it.",
        "",
        f"**Needless elections under heavy write load** ({writers} closed-loop writers, "
        f"{seconds:.0f} s, no fault injected; heartbeat = min(100 ms, timeout / 3)):",
        "",
        "| election timeout | elections | writes acknowledged |",
        "|---:|---:|---:|",
    ]
    for election_ms, (count, writes) in sorted(elections.items()):
        lines.append(f"| {election_ms} ms | {count} | {writes:,} |")
    lines += [
        "",
        "Trade-off: a shorter timeout fails over sooner (the failover time above scales "
        "with it), but every pause longer than the timeout — a slow fsync, a long "
        "transaction holding the event loop, a GC pause, a busy core — looks like a dead "
        "leader and costs an election (a few hundred ms with no writes).",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def write_report(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if MARK_BEGIN in text and MARK_END in text:
        before = text.split(MARK_BEGIN)[0]
        after = text.split(MARK_END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--timeouts", default="150,300,1000")
    parser.add_argument("--write", type=Path, help="update this markdown file's section")
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    for mode in ("kill", "pause"):
        print(f"failover: {args.kills} x {mode} the leader", flush=True)
        times[mode] = failover_times(args.kills, mode)
        print(_ms(times[mode]).replace("*", ""), flush=True)
    elections: dict[int, tuple[int, int]] = {}
    for election_ms in (int(t) for t in args.timeouts.split(",")):
        print(f"needless elections at election timeout {election_ms} ms ...", flush=True)
        elections[election_ms] = needless_elections(election_ms, args.seconds, args.writers)
        print(
            f"  {elections[election_ms][0]} elections, {elections[election_ms][1]} writes",
            flush=True,
        )
    section = report(times, elections, args.seconds, args.writers)
    print(section)
    if args.write:
        write_report(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
