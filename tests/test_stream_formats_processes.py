"""The same workload under each of the four stream formats, on real processes: every
replica ends identical (row checksums; for `wal`, identical database files too)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

SCHEMA = [
    "CREATE TABLE items(id INTEGER PRIMARY KEY AUTOINCREMENT, r INTEGER, tag BLOB, "
    "made TEXT DEFAULT CURRENT_TIMESTAMP, at TEXT)",
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, item INTEGER, what TEXT)",
    "CREATE TRIGGER items_audit AFTER UPDATE ON items BEGIN "
    "INSERT INTO audit(item, what) VALUES (new.id, 'r ' || old.r || ' -> ' || new.r); END",
]
TABLES = ["items", "audit", "notes", "sqlite_sequence"]
KEYS = {"sqlite_sequence": "name"}


def _workload(conn: replidb.Connection, stream: str) -> None:
    cur = conn.cursor()
    for sql in SCHEMA:
        cur.execute(sql)
    for i in range(40):
        cur.execute(
            "INSERT INTO items(r, tag, at) VALUES (random(), randomblob(4), datetime('now'))"
        )
        if i % 5 == 4:
            cur.execute("UPDATE items SET r = abs(random()) % 1000 WHERE id = ?", (i - 2,))
        if i % 7 == 6:
            cur.execute("DELETE FROM items WHERE id = ?", (i - 5,))
    cur.execute("ALTER TABLE items ADD COLUMN note TEXT")
    cur.execute("CREATE INDEX items_r ON items(r)")
    cur.execute("CREATE TABLE notes(k TEXT PRIMARY KEY, v TEXT)")
    if stream != "statement":  # refused there; mixed ships this one as rows
        cur.execute("INSERT INTO audit(item, what) SELECT id, 'copy' FROM items WHERE id < 9")
    conn.autocommit = False
    cur.execute("INSERT INTO notes VALUES ('first', julianday('now'))")
    cur.execute("UPDATE items SET note = 'with ' || last_insert_rowid() WHERE id > 30")
    conn.commit()


@pytest.mark.parametrize("stream", ["statement", "wal", "logical", "mixed"])
def test_one_workload_ends_identical_on_every_replica(tmp_path: Path, stream: str) -> None:
    cluster = LocalCluster(tmp_path, nodes=3, extra=("--stream", stream))
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        conn = replidb.connect(cluster.addresses[leader], autocommit=True)
        _workload(conn, stream)
        conn.close()
        sums = {t: cluster.wait_converged(t, key=KEYS.get(t, "rowid")) for t in TABLES}
        rows = cluster.query(leader, "SELECT count(*), count(DISTINCT r) FROM items")
        assert rows[0][0] > 25 and rows[0][1] > 20  # random() really varied
        assert cluster.query(leader, "SELECT count(*) FROM audit")[0][0] >= 7  # the trigger
        assert len(sums) == len(TABLES)
        assert cluster.query(leader, "SELECT count(*) FROM items WHERE made IS NULL")[0][0] == 0
        status = cluster.status(leader)
        assert status is not None and status.stream == stream
    finally:
        cluster.stop_all()
    if stream == "wal":  # stopping checkpoints: the files themselves must be identical
        digests = {
            node: hashlib.sha256((tmp_path / node / "data.db").read_bytes()).hexdigest()
            for node in cluster.ids
        }
        assert len(set(digests.values())) == 1, digests


def test_statement_stream_refuses_unsafe_sql_over_the_wire(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=3, extra=("--stream", "statement"))
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        conn = replidb.connect(cluster.connect, autocommit=True)
        cur = conn.cursor()
        cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        before = cluster.status(leader)
        with pytest.raises(replidb.ProgrammingError, match="sqlite_version\\(\\)"):
            cur.execute("INSERT INTO t(v) VALUES (sqlite_version())")
        time.sleep(0.3)
        after = cluster.status(leader)
        assert before is not None and after is not None
        assert after.last_index == before.last_index  # nothing was logged
        cur.execute("INSERT INTO t(v) VALUES (hex(randomblob(8)))")
        conn.close()
        cluster.wait_converged("t")
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("stream", ["statement", "wal", "mixed"])
def test_failover_keeps_replicas_identical(tmp_path: Path, stream: str) -> None:
    """A new leader raises AUTOINCREMENT counters outside the log (ids a lost write may
    have handed out are never reused); its first statement ships the counter, so replay
    gives every replica the same ids. The old leader rejoins and agrees."""
    cluster = LocalCluster(tmp_path, nodes=3, extra=("--stream", stream))
    cluster.start_all()
    try:
        first = cluster.wait_for_leader()
        conn = replidb.connect(cluster.connect, autocommit=True)
        cur = conn.cursor()
        cur.execute("CREATE TABLE ids(id INTEGER PRIMARY KEY, v TEXT, at TEXT)")
        for i in range(5):
            cur.execute("INSERT INTO ids(v, at) VALUES (?, datetime('now'))", (f"a{i}",))
        cluster.wait_converged("ids")
        cluster.kill(first)
        second = cluster.wait_for_leader(exclude=first)
        for i in range(5):
            cur.execute("INSERT INTO ids(v, at) VALUES (?, datetime('now'))", (f"b{i}",))
        cluster.start(first)
        cluster.wait_converged("ids", nodes=cluster.ids, timeout=30)
        ids = [row[0] for row in cluster.query(second, "SELECT id FROM ids ORDER BY id")]
        assert ids[:5] == [1, 2, 3, 4, 5] and ids[5] > 1000  # above the lease
        conn.close()
    finally:
        cluster.stop_all()


def test_a_wal_cluster_upgrades_by_switching_to_logical(tmp_path: Path) -> None:
    """The way out of wal's version lock (docs/streams.md): stop, restart every node
    with --stream logical; data, log position and term carry over; writes go on."""
    cluster = LocalCluster(tmp_path, nodes=3, extra=("--stream", "wal"))
    cluster.start_all()
    try:
        cluster.wait_for_leader()
        conn = replidb.connect(cluster.connect, autocommit=True)
        conn.cursor().execute("CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT)")
        for i in range(20):
            conn.cursor().execute("INSERT INTO u(v) VALUES (?)", (f"wal {i}",))
        conn.close()
        cluster.wait_converged("u")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # every node has applied everything
            statuses = [cluster.status(n) for n in cluster.ids]
            if all(s and s.applied_index == statuses[0].applied_index for s in statuses):
                break
            time.sleep(0.1)
    finally:
        cluster.stop_all()
    cluster.extra = ("--stream", "logical")
    cluster.start_all()
    try:
        cluster.wait_for_leader()
        conn = replidb.connect(cluster.connect, autocommit=True)
        conn.cursor().execute("INSERT INTO u(v) VALUES ('logical')")
        conn.close()
        cluster.wait_converged("u")
        leader = cluster.wait_for_leader()
        assert cluster.query(leader, "SELECT count(*) FROM u")[0][0] == 21
        assert all((tmp_path / n / "wal-era" / "data.db").exists() for n in cluster.ids)
        assert "converted this node from the wal layout" in cluster.log("n1")
    finally:
        cluster.stop_all()
    cluster.extra = ("--stream", "wal")
    cluster.start("n1")  # one-file data cannot go back to wal by itself
    assert cluster.procs["n1"].wait(30) == 1
    assert "error: " in cluster.log("n1") and "Traceback" not in cluster.log("n1")
    assert "seed this node from a copy of the leader's data.db" in cluster.log("n1")
    cluster.stop_all()
