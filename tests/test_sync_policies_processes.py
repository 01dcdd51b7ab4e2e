"""Commit policies on real processes: block, degrade, per-transaction override."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, *extra: str) -> LocalCluster:
    cluster = LocalCluster(tmp_path, extra=extra)
    cluster.start_all()
    return cluster


def _table(cluster: LocalCluster) -> str:
    leader = cluster.wait_for_leader()
    conn = replidb.connect(cluster.connect, autocommit=True)
    conn.cursor().execute("CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    cluster.wait_converged("s")
    return leader


def test_all_blocks_until_the_deadline_and_a_transaction_may_ask_for_less(
    tmp_path: Path,
) -> None:
    cluster = _start(tmp_path, "--sync", "all")
    try:
        leader = _table(cluster)
        follower = next(n for n in cluster.ids if n != leader)
        cluster.kill(follower)
        conn = replidb.connect(cluster.addresses[leader], timeout=3.0, autocommit=True)
        started = time.monotonic()
        with pytest.raises(replidb.OutcomeUnknown):
            conn.cursor().execute("INSERT INTO s VALUES (1, 'needs every node')")
        assert time.monotonic() - started >= 2.5  # it waited: never "ok", never "failed"
        conn.sync = "quorum"  # like SET synchronous_commit for this connection's writes
        conn.cursor().execute("INSERT INTO s VALUES (2, 'a majority is enough')")
        conn.close()
        status = cluster.status(leader)
        assert status is not None and not status.degraded
        assert "waits for 3 of 3 nodes" in status.durability
    finally:
        cluster.stop_all()


def test_degrade_falls_back_to_async_visibly_and_recovers(tmp_path: Path) -> None:
    cluster = _start(
        tmp_path, "--sync", "all", "--on-sync-timeout", "degrade", "--sync-timeout-ms", "300"
    )
    try:
        leader = _table(cluster)
        follower = next(n for n in cluster.ids if n != leader)
        cluster.kill(follower)
        conn = replidb.connect(cluster.addresses[leader], timeout=5.0, autocommit=True)
        started = time.monotonic()
        conn.cursor().execute("INSERT INTO s VALUES (1, 'acknowledged as async')")
        assert 0.25 <= time.monotonic() - started < 4.0
        status = cluster.status(leader)
        assert status is not None and status.degraded and status.degradations == 1
        assert "degrading to async" in cluster.log(leader)
        cluster.start(follower)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = cluster.status(leader)
            if status is not None and not status.degraded:
                break
            time.sleep(0.1)
        assert status is not None and not status.degraded, "never returned to sync"
        assert "commit policy all again" in cluster.log(leader)
        conn.cursor().execute("INSERT INTO s VALUES (2, 'synchronous again')")
        conn.close()
        cluster.wait_converged("s")
    finally:
        cluster.stop_all()


def test_a_bad_sync_policy_is_refused_in_one_line(cluster: LocalCluster) -> None:
    with pytest.raises(replidb.InterfaceError, match="bad sync policy: unknown commit policy"):
        replidb.connect(cluster.connect, sync="sometimes")


def test_a_leader_older_than_the_clients_newest_term_refuses_writes(
    cluster: LocalCluster,
) -> None:
    """Fencing: a client that has seen term T never gets "ok" from a leader of term < T."""
    from replidb.client.transport import Client
    from replidb.transport import wire

    leader = cluster.wait_for_leader()
    client = Client(cluster.addresses[leader], timeout=1.5)
    client.execute([wire.Statement("CREATE TABLE f(x)")], write=True)
    assert client.max_term >= 1  # learned from the reply
    client.max_term += 10  # as if it had talked to a newer leader elsewhere
    with pytest.raises((replidb.OutcomeUnknown, replidb.Unavailable)) as info:
        client.execute([wire.Statement("INSERT INTO f VALUES (1)")], write=True)
    assert "client has seen term" in str(info.value)
    client.close()
    assert cluster.query(leader, "SELECT count(*) FROM f") == [[0]]
