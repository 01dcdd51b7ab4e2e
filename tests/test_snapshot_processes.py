"""Catch-up by snapshot on real processes: a follower down while 200,000 rows are
written, with a retention cap far below that, comes back by snapshot to identical
contents; killed in the middle of the transfer, it resumes where it stopped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.slow

ROWS_PER_TXN = 100
TXNS = 2000  # 200,000 rows
INSERT = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "INSERT INTO t(batch, v) SELECT ?, printf('row %06d of batch %d', i, ?) FROM n ORDER BY i"
)


def _rows(path: Path) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_follower_far_behind_catches_up_by_a_resumed_snapshot(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path,
        nodes=3,
        extra=("--max-log-entries", "200", "--snapshot-chunk-bytes", "65536"),
        node_env={"n3": {"REPLIDB_DEBUG_SNAPSHOT_CHUNK_DELAY_MS": "15"}},
    )
    cluster.start_all()
    try:
        cluster.wait_for_leader()
        cluster.kill("n3")  # the follower that falls behind (if it led, another takes over)
        leader = cluster.wait_for_leader(exclude="n3")
        conn = replidb.connect(cluster.addresses[leader], autocommit=True, timeout=30)
        cur = conn.cursor()
        cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, batch INTEGER, v TEXT)")
        for batch in range(TXNS):
            cur.execute(INSERT, (ROWS_PER_TXN, batch, batch))
        conn.close()
        wait_until(
            lambda: (s := cluster.status(leader)) is not None and s.first_index > 1000,
            30,
            "the leader to compact its log",
        )
        wait_until(
            lambda: (s := cluster.status(leader)) is not None and s.needs_snapshot == ["n3"],
            10,
            "the leader to mark n3 as needing a snapshot",
        )
        out = subprocess.run(
            [sys.executable, "-m", "replidb", "status", "--connect", cluster.addresses[leader]],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert "n3: needs a snapshot" in out
        # n3 starts fetching (slowed down), and is killed part-way through.
        cluster.start("n3")
        sidecar = tmp_path / "n3" / "snapshots" / "snapshot.partial.json"

        def part_way() -> bool:
            try:
                state = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                return False
            return bool(0.2 * state["total"] < state["offset"] < 0.8 * state["total"])

        wait_until(part_way, 60, "the snapshot transfer to get part-way")
        cut_at = json.loads(sidecar.read_text())["offset"]
        cluster.kill("n3")
        cluster.node_env["n3"] = {}
        cluster.start("n3")
        wait_until(lambda: "installed snapshot" in cluster.log("n3"), 60, "the snapshot install")
        log = cluster.log("n3")
        resumed = [int(m) for m in re.findall(r"resuming at byte (\d+)", log)]
        assert resumed[0] == 0 and resumed[-1] >= cut_at > 0, resumed
        runs = re.findall(r"(\d+) bytes of it in this run \(from byte (\d+)\)", log)
        this_run, start = (int(x) for x in runs[-1])
        total = int(re.findall(r"at index \d+ from \S+: (\d+) bytes", log)[-1])
        assert start == resumed[-1] and this_run == total - start  # only what was left
        cluster.wait_converged("t", nodes=cluster.ids, timeout=60)
        status = cluster.status(leader)
        assert status is not None and status.needs_snapshot == []
    finally:
        cluster.stop_all()
    rows = {n: _rows(tmp_path / n / "replidb.db") for n in cluster.ids}
    assert len(rows["n1"]) == ROWS_PER_TXN * TXNS
    assert rows["n1"] == rows["n2"] == rows["n3"]
