"""Backup and restore with real processes, logical and wal: `replidb backup` of a live
3-node cluster seeds a replacement for a node that lost its disk (it catches up from the
leader's log), and then all three nodes of a NEW cluster, which elects a leader, holds
exactly the rows of the backup, and takes new writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import replidb
from replidb.storage.restore import read_backup
from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

ROWS = 300


def _replidb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replidb", *args], capture_output=True, text=True, timeout=60
    )


def _write(connect: str, *statements: str) -> None:
    conn = replidb.connect(connect, timeout=10.0, autocommit=True)
    try:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
    finally:
        conn.close()


def _restore(backup: Path, data: Path, node: str, stream: str) -> None:
    done = _replidb(
        "restore", "--from", str(backup), "--data", str(data), "--stream", stream,
        "--node-id", node,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"restored {node} at index ")


@pytest.mark.parametrize("stream", ["logical", "wal"])
def test_backup_seeds_a_lost_node_and_a_new_cluster(tmp_path: Path, stream: str) -> None:
    out = tmp_path / "backup.db"
    old = LocalCluster(tmp_path / "old", extra=("--stream", stream))
    (tmp_path / "old").mkdir()
    old.start_all()
    try:
        leader = old.wait_for_leader()
        _write(
            old.connect,
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < "
            f"{ROWS}) INSERT INTO t(v) SELECT printf('row %04d', i) FROM n",
        )
        done = _replidb("backup", "--connect", old.addresses[leader], "--out", str(out))
        assert done.returncode == 0, done.stderr
        info = read_backup(out)
        assert done.stdout == (
            f"backup of index {info.index} (term {info.term}): "
            f"{info.size / 1e6:.2f} MB in {done.stdout.split(' in ')[1].split(' s ')[0]} s"
            f" -> {out}\n"
        )
        assert info.leader == leader and info.stream == stream
        refused = _replidb("backup", "--connect", old.connect, "--out", str(out))
        assert refused.returncode == 1 and refused.stderr.startswith("error: ")
        assert "exists" in refused.stderr and refused.stderr.count("\n") == 1

        # A follower loses its disk: seeded from the backup, it catches up by the log
        # with what was written meanwhile. (It goes down before that write: a node
        # restored to an older position than it acknowledged is waited for by the
        # leader until leadership changes, since a leader never lowers a follower's
        # acknowledged index.)
        lost = next(n for n in old.ids if n != leader)
        old.kill(lost)
        _write(old.connect, "INSERT INTO t(v) VALUES ('after the backup')")
        shutil.rmtree(tmp_path / "old" / lost)
        _restore(out, tmp_path / "old" / lost, lost, stream)
        old.start(lost)
        old.wait_converged("t")
        assert old.query(lost, "SELECT count(*) FROM t") == [[ROWS + 1]]
    finally:
        old.stop_all()

    # A new cluster, every node restored from the same file.
    new = LocalCluster(tmp_path / "new", extra=("--stream", stream))
    for node in new.ids:
        _restore(out, tmp_path / "new" / node, node, stream)
    new.start_all()
    try:
        new_leader = new.wait_for_leader()
        expected = [[i, f"row {i:04d}"] for i in range(1, ROWS + 1)]
        for node in new.ids:
            assert new.query(node, "SELECT id, v FROM t ORDER BY id") == expected
        _write(new.connect, "INSERT INTO t(v) VALUES ('new cluster')")
        new.wait_converged("t")
        # Ids go on above the backup's (its id floors came with the data).
        [[new_id]] = new.query(new_leader, "SELECT id FROM t WHERE v = 'new cluster'")
        assert new_id > ROWS

        done = _replidb("status", "--connect", new.connect, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["leader"] == new_leader and report["stream"] == stream
        for row in report["nodes"]:
            assert row["healthy"], row
            assert row["term"] > info.term  # elected above the restored log's term
            assert row["commit_index"] > info.index  # the new write, after the backup's
    finally:
        new.stop_all()
