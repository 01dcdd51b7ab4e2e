"""Read consistency against a replica held deliberately behind (issue #6, first part)."""

from __future__ import annotations

from pathlib import Path

import pytest

import replidb
from replidb.client import Client
from replidb.client.admin import transfer_leader
from replidb.testing.local_cluster import LocalCluster
from replidb.transport.wire import Statement

pytestmark = pytest.mark.slow


@pytest.fixture
def lagging(tmp_path: Path) -> LocalCluster:
    """n3 holds every message from its peers for 300 ms: it applies everything late."""
    cluster = LocalCluster(tmp_path, node_extra={"n3": ("--debug-peer-delay-ms", "300")})
    cluster.start_all()
    if cluster.wait_for_leader(timeout=15) == "n3":
        transfer_leader(cluster.connect, "n1")
    cluster.wait_for_leader(timeout=15, exclude="n3")
    return cluster


def test_session_reads_your_writes_any_can_be_stale_leader_is_current(
    lagging: LocalCluster,
) -> None:
    try:
        behind = lagging.addresses["n3"]
        session = replidb.connect(behind, consistency="session", autocommit=True)
        anyone = replidb.connect(behind, consistency="any", autocommit=True)
        leader = replidb.connect(behind, consistency="leader", autocommit=True)
        session.cursor().execute("CREATE TABLE s(n INTEGER PRIMARY KEY)")
        stale = 0
        for n in range(1, 11):
            session.cursor().execute("INSERT INTO s VALUES (?)", (n,))  # forwarded by n3
            # session: n3 waits until it has applied this client's write
            assert session.cursor().execute("SELECT count(*) FROM s").fetchone() == (2 * n - 1,)
            session.cursor().execute("INSERT INTO s VALUES (?)", (100 + n,))
            # any: whatever n3 has applied so far (it is 300 ms behind)
            seen = anyone.cursor().execute("SELECT count(*) FROM s").fetchone()
            stale += seen is not None and seen[0] < 2 * n
            # leader: the leader's answer, through n3
            assert leader.cursor().execute("SELECT count(*) FROM s").fetchone() == (2 * n,)
        assert stale > 0, "n3 was never behind: the test did not test anything"
        for conn in (session, anyone, leader):
            conn.close()
    finally:
        lagging.stop_all()


def test_bounded_reads_are_served_when_fresh_enough_and_redirected_otherwise(
    lagging: LocalCluster,
) -> None:
    try:
        writer = replidb.connect(lagging.connect, autocommit=True)
        writer.cursor().execute("CREATE TABLE b(n INTEGER PRIMARY KEY)")
        behind = lagging.addresses["n3"]
        leader = lagging.addresses[lagging.wait_for_leader(exclude="n3")]
        loose = Client(behind, consistency="bounded:5")
        tight = Client(behind, consistency="bounded:0.1")  # n3 is 300 ms behind
        try:
            for n in range(1, 6):
                writer.cursor().execute("INSERT INTO b VALUES (?)", (n,))
                loose.execute([Statement("SELECT count(*) FROM b")], write=False)
                assert loose.last_address == behind  # within 5 s: n3 serves it
                rows = tight.execute([Statement("SELECT count(*) FROM b")], write=False)
                assert tight.last_address == leader  # redirected, and current there
                assert rows[0].rows == [[n]]
        finally:
            loose.close()
            tight.close()
        writer.close()
    finally:
        lagging.stop_all()


def test_linearizable_reads_see_every_write_acknowledged_before_they_began(
    lagging: LocalCluster,
) -> None:
    try:
        writer = replidb.connect(lagging.connect, autocommit=True)
        writer.cursor().execute("CREATE TABLE l(n INTEGER PRIMARY KEY)")
        behind = lagging.addresses["n3"]
        anyone = replidb.connect(behind, consistency="any", autocommit=True)
        strict = replidb.connect(behind, consistency="linearizable", autocommit=True)
        stale = 0
        for n in range(1, 21):
            writer.cursor().execute("INSERT INTO l VALUES (?)", (n,))  # acknowledged
            seen = anyone.cursor().execute("SELECT count(*) FROM l").fetchone()
            stale += seen is None or seen[0] < n
            # Another client, through the lagging node, after the acknowledgement:
            assert strict.cursor().execute("SELECT count(*) FROM l").fetchone() == (n,)
        assert stale > 0, "n3 was never behind: the test did not test anything"
        for conn in (writer, anyone, strict):
            conn.close()
    finally:
        lagging.stop_all()
