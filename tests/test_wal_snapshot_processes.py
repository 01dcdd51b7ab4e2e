"""Catch-up by snapshot for the wal stream on real processes: a follower down while
20,000 rows are written, with a retention cap far below that, comes back by installing
the leader's data file, made while a client keeps writing, and ends byte-identical to
the others."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster, NumberedWriter, wait_until

pytestmark = pytest.mark.slow

ROWS_PER_TXN = 100
TXNS = 200  # 20,000 rows
INSERT = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "INSERT INTO t(batch, v) SELECT ?, printf('row %06d of batch %d', i, ?) FROM n ORDER BY i"
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_follower_far_behind_catches_up_by_a_wal_snapshot(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=3, extra=("--stream", "wal", "--max-log-entries", "50"))
    cluster.start_all()
    try:
        cluster.wait_for_leader()
        cluster.kill("n3")  # the follower that falls behind (if it led, another takes over)
        leader = cluster.wait_for_leader(exclude="n3")
        conn = replidb.connect(cluster.addresses[leader], autocommit=True, timeout=30)
        cur = conn.cursor()
        cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, batch INTEGER, v TEXT)")
        cur.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, n INTEGER UNIQUE)")
        for batch in range(TXNS):
            cur.execute(INSERT, (ROWS_PER_TXN, batch, batch))
        # Past what n3 holds. (Not "> 100": compaction goes in batches of 64 entries,
        # so where it stops over these ~200 entries depends on when it ran.)
        wait_until(
            lambda: (s := cluster.status(leader)) is not None and s.first_index > 64,
            15,
            "the leader to compact its log",
        )
        wait_until(
            lambda: (s := cluster.status(leader)) is not None and s.needs_snapshot == ["n3"],
            10,
            "the leader to mark n3 as needing a snapshot",
        )
        # The snapshot is made while writes go on (the copy runs beside them).
        writer = NumberedWriter(cluster.addresses[leader], "w")
        writer.start()
        cluster.start("n3")
        wait_until(lambda: "installed snapshot" in cluster.log("n3"), 30, "the snapshot install")
        time.sleep(0.5)  # n3 continues from the log on top of the installed file
        writer.stop.set()
        writer.join(30)
        assert not writer.errors and not writer.unknown, writer.errors[:3]
        assert len(writer.acked) > 20
        conn.close()
        cluster.wait_converged("t", nodes=cluster.ids, timeout=30)
        cluster.wait_converged("w", nodes=cluster.ids, timeout=30)
        assert cluster.query("n3", "SELECT count(*) FROM t") == [[ROWS_PER_TXN * TXNS]]
        status = cluster.status(leader)
        assert status is not None and status.needs_snapshot == []
        made = re.findall(
            r"made snapshot \S+ at index (\d+): ([\d.]+) MB in ([\d.]+)s", cluster.log(leader)
        )
        installed = re.findall(r"installed snapshot at index (\d+)", cluster.log("n3"))
        assert made and installed and installed[-1] in {m[0] for m in made}, (made, installed)
    finally:
        cluster.stop_all()
    digests = {n: _digest(tmp_path / n / "data.db") for n in cluster.ids}
    assert len(set(digests.values())) == 1, digests
