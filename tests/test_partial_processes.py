"""Partial replication on real processes: a learner subscribed to some tables, rows and
columns holds exactly that subset while UPDATEs move rows across its filter; it never
leads; bad subscriptions are refused at start with one clear line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

SUBSCRIBE = (
    "--subscribe",
    "users(id, name, region) WHERE region = 'eu' AND id % 2 = 1",
    "--subscribe",
    "orders",
)


def _workload(conn: replidb.Connection) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, region TEXT, secret TEXT)")
    cur.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INTEGER, total REAL)")
    cur.execute("CREATE TABLE internal(k TEXT PRIMARY KEY, v TEXT)")
    regions = ["eu", "us", "apac"]
    for i in range(1, 61):
        cur.execute(
            "INSERT INTO users(id, name, region, secret) VALUES (?, ?, ?, ?)",
            (i, f"user{i}", regions[i % 3], f"s{i}"),
        )
        cur.execute("INSERT INTO orders(user_id, total) VALUES (?, ?)", (i, i * 1.5))
        cur.execute("INSERT INTO internal VALUES (?, 'x')", (f"k{i}",))
    cur.execute("UPDATE users SET region = 'eu' WHERE region = 'us'")  # rows move in
    cur.execute("UPDATE users SET region = 'apac' WHERE id % 5 = 0")  # and out
    cur.execute("UPDATE users SET name = name || '!' WHERE id % 3 = 0")  # stay in or out
    cur.execute("UPDATE users SET secret = 'changed'")  # not a subscribed column
    cur.execute("DELETE FROM users WHERE id > 50")
    cur.execute("UPDATE users SET id = id + 100 WHERE id = 7")  # a key change
    cur.execute("DELETE FROM orders WHERE total > 60")
    cur.execute("ALTER TABLE users ADD COLUMN nickname TEXT")  # not in the column list


@pytest.mark.parametrize("catch_up", ["log", "snapshot"])
def test_a_partial_replica_holds_exactly_its_subset(tmp_path: Path, catch_up: str) -> None:
    """Live from the log; or started only after the leader compacted its log past it
    (a 50-entry cap), by installing its filtered subset of the leader's snapshot."""
    retention = ("--max-log-entries", "50") if catch_up == "snapshot" else ()
    cluster = LocalCluster(
        tmp_path,
        nodes=4,
        extra=("--learners", "n4", "--row-images", "full", *retention),
        node_extra={"n4": SUBSCRIBE},
    )
    for node in ("n1", "n2", "n3") if catch_up == "snapshot" else cluster.ids:
        cluster.start(node)
    try:
        leader = cluster.wait_for_leader()
        conn = replidb.connect(cluster.addresses[leader], autocommit=True)
        _workload(conn)
        conn.close()
        if catch_up == "snapshot":
            deadline = time.monotonic() + 15
            while (s := cluster.status(leader)) is None or s.first_index <= 64:
                assert time.monotonic() < deadline, "the leader did not compact its log"
                time.sleep(0.1)
            cluster.start("n4")
        expected = cluster.query(
            leader,
            "SELECT id, name, region FROM users WHERE region = 'eu' AND id % 2 = 1 ORDER BY id",
        )
        orders = cluster.query(leader, "SELECT * FROM orders ORDER BY id")
        assert 10 < len(expected) < 40
        target = cluster.status(leader)
        assert target is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = cluster.status("n4")
            if status is not None and status.applied_index >= target.last_index:
                break
            time.sleep(0.1)
        got = cluster.query("n4", "SELECT id, name, region FROM users ORDER BY id")
        assert got == expected
        assert cluster.query("n4", "SELECT * FROM orders ORDER BY id") == orders
        columns = [r[1] for r in cluster.query("n4", "SELECT * FROM pragma_table_info('users')")]
        assert columns == ["id", "name", "region"]
        tables = cluster.query("n4", "SELECT name FROM sqlite_schema WHERE name = 'internal'")
        assert tables == []
        status = cluster.status("n4")
        assert status is not None and status.role == "learner"
        assert "region = 'eu'" in status.subscription
        if catch_up == "snapshot":
            assert "filtered snapshot at" in cluster.log("n4")
            assert "installed snapshot" in cluster.log("n4")
    finally:
        cluster.stop_all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--subscribe", "users"), "only a learner can be a partial replica"),
        (
            ("--learners", "n2", "--stream", "statement", "--subscribe", "users"),
            "needs --stream logical",
        ),
        (("--learners", "n2", "--subscribe", "users WHERE (SELECT 1)"), "users"),
    ],
)
def test_bad_subscriptions_are_refused_at_start(options: tuple[str, ...], message: str) -> None:
    command = [
        sys.executable,
        "-m",
        "replidb",
        "serve",
        "--node-id",
        "n2",
        "--data",
        "/nonexistent/never-created",
        "--listen",
        "127.0.0.1:1",
        "--peers",
        "n1=127.0.0.1:2",
        *options,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
