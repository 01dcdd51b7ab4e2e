"""Catch-up benchmark (issue #5): how fast a follower that was down comes back — from
the log (entries/s) when the leader still holds what it missed, and by snapshot (MB/s
of transfer, and the whole catch-up) when the log was compacted past it. Real
processes on loopback; results go to docs/benchmarks.md.

    .venv/bin/python bench/catchup.py --entries 20000 --rows 200000 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import write_section

import replidb
from replidb.testing.local_cluster import LocalCluster

INSERT_MANY = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "INSERT INTO t(v) SELECT printf('row %06d', i) FROM n ORDER BY i"
)


def _follower_behind(cluster: LocalCluster, write: object) -> tuple[str, float]:
    """Stop n3, run ``write(cursor)``, restart n3; seconds until it has applied all."""
    leader = cluster.wait_for_leader(timeout=15)
    if leader == "n3":
        cluster.kill("n3")
        leader = cluster.wait_for_leader(exclude="n3", timeout=15)
        cluster.start("n3")
    time.sleep(0.5)
    cluster.kill("n3")
    conn = replidb.connect(cluster.addresses[leader], autocommit=True, timeout=30)
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    write(cur)  # type: ignore[operator]
    conn.close()
    target = cluster.status(leader)
    assert target is not None
    cluster.start("n3")
    started = time.monotonic()
    while True:
        status = cluster.status("n3")
        if status is not None and status.applied_index >= target.last_index:
            return leader, time.monotonic() - started
        if time.monotonic() - started > 600:
            raise RuntimeError("n3 did not catch up within 10 minutes")
        time.sleep(0.02)


def log_catch_up(entries: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), extra=("--max-log-entries", str(10 * entries)))
        cluster.start_all()
        try:

            def write(cur: replidb.Cursor) -> None:
                for i in range(entries):
                    cur.execute("INSERT INTO t(v) VALUES (?)", (f"entry {i}",))

            _, seconds = _follower_behind(cluster, write)
            assert "installed snapshot" not in cluster.log("n3")
            return entries, seconds
        finally:
            cluster.stop_all()


def snapshot_catch_up(rows: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="replidb-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), extra=("--max-log-entries", "100"))
        cluster.start_all()
        try:

            def write(cur: replidb.Cursor) -> None:
                for _ in range(rows // 1000):
                    cur.execute(INSERT_MANY, (1000,))
                time.sleep(2.5)  # let the compactor run past n3

            _, seconds = _follower_behind(cluster, write)
            log = cluster.log("n3")
            fetched = re.findall(
                r"fetched snapshot \S+ at index \d+: ([\d.]+) MB.*\(([\d.]+) MB/s\)", log
            )
            if not fetched:
                raise RuntimeError("n3 caught up without a snapshot: raise --rows")
            size_mb, rate = (float(x) for x in fetched[-1])
            return {"size_mb": size_mb, "transfer_mb_s": rate, "catch_up_s": seconds}
        finally:
            cluster.stop_all()


def report(entries: int, log_s: float, rows: int, snap: dict[str, float]) -> str:
    return "\n".join(
        [
            "## Catch-up (bench/catchup.py)",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python "
            f"{platform.python_version()}, 3 real `replidb serve` processes on loopback, "
            "logical stream. A follower is stopped, writes happen, it is restarted; the time "
            "runs from its restart until it has applied the leader's last index (process "
            "start included).",
            "",
            f"- **from the log**: {entries:,} one-row transactions missed, caught up in "
            f"{log_s:.2f} s = **{entries / log_s:,.0f} entries/s** (the leader sends batches "
            "of up to 256 entries / 1 MiB, one batch in flight).",
            f"- **by snapshot**: {rows:,} rows written with `--max-log-entries 100`; the "
            f"leader made a {snap['size_mb']:.1f} MB snapshot, sent at "
            f"**{snap['transfer_mb_s']:.0f} MB/s** (1 MiB chunks, 4 in flight, each fsynced "
            f"and checksummed); whole catch-up {snap['catch_up_s']:.2f} s.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--write", type=Path, help="update this markdown file's section")
    args = parser.parse_args()
    entries, log_s = log_catch_up(args.entries)
    print(f"log: {entries} entries in {log_s:.2f}s", flush=True)
    snap = snapshot_catch_up(args.rows)
    print(f"snapshot: {snap}", flush=True)
    section = report(entries, log_s, args.rows, snap)
    print(section)
    if args.write:
        write_section(args.write, "catchup", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
