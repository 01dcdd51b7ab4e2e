"""Interactive transactions on a live cluster (client/connection.py): a transaction
sees its own writes and gets row ids at once, others see nothing before commit; a
lost update is refused with Conflict; a vanished client leaves nothing to wait for;
a transaction lives through a failover unless what it read changed."""

from __future__ import annotations

from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def bank(tmp_path: Path) -> LocalCluster:
    cluster = LocalCluster(tmp_path, extra=("--sync", "quorum"))
    cluster.start_all()
    cluster.wait_for_leader()
    setup = replidb.connect(cluster.connect, autocommit=True)
    setup.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)")
    setup.execute("INSERT INTO acct(owner, balance) VALUES ('alice', 100), ('bob', 50)")
    setup.close()
    return cluster


def _balance(cluster: LocalCluster, owner: str) -> int:
    conn = replidb.connect(cluster.connect, consistency="linearizable", autocommit=True)
    row = conn.execute("SELECT balance FROM acct WHERE owner = ?", (owner,)).fetchone()
    conn.close()
    assert row is not None
    return int(row[0])


def test_a_transaction_sees_its_own_writes_and_nobody_else_does(bank: LocalCluster) -> None:
    try:
        conn = replidb.connect(bank.connect)  # DB-API: a transaction from the first write
        other = replidb.connect(bank.connect, consistency="linearizable", autocommit=True)
        cur = conn.cursor()
        cur.execute("INSERT INTO acct(owner, balance) VALUES ('carol', 10)")
        assert cur.lastrowid == 3 and cur.rowcount == 1  # at once, not at commit
        cur.execute("UPDATE acct SET balance = balance - 10 WHERE owner = 'alice'")
        cur.execute("SELECT owner, balance FROM acct ORDER BY id")
        assert cur.fetchall() == [("alice", 90), ("bob", 50), ("carol", 10)]
        assert other.execute("SELECT count(*) FROM acct").fetchone() == (2,)  # not yet
        conn.commit()
        assert other.execute("SELECT sum(balance) FROM acct").fetchone() == (150,)
        conn.close()
        other.close()
    finally:
        bank.stop_all()


def test_a_lost_update_is_refused_and_the_retry_applies(bank: LocalCluster) -> None:
    try:
        first = replidb.connect(bank.connect, autocommit=True)
        second = replidb.connect(bank.connect, autocommit=True)
        balances = []
        for conn in (first, second):
            conn.execute("BEGIN")
            row = conn.execute("SELECT balance FROM acct WHERE owner = 'alice'").fetchone()
            assert row is not None
            balances.append(row[0])
        assert balances == [100, 100]  # both read before either wrote
        for conn, amount in ((first, 10), (second, 20)):
            conn.execute(
                "UPDATE acct SET balance = ? WHERE owner = 'alice'", (balances[0] + amount,)
            )
        first.execute("COMMIT")
        with pytest.raises(replidb.Conflict, match="reads changed before it committed"):
            second.execute("COMMIT")  # it read 100, which is no longer true
        assert _balance(bank, "alice") == 110  # the second update was not applied
        second.execute("BEGIN")  # the retry reads afresh
        row = second.execute("SELECT balance FROM acct WHERE owner = 'alice'").fetchone()
        assert row is not None
        second.execute("UPDATE acct SET balance = ? WHERE owner = 'alice'", (row[0] + 20,))
        second.execute("COMMIT")
        assert _balance(bank, "alice") == 130
        first.close()
        second.close()
    finally:
        bank.stop_all()


def test_a_vanished_client_leaves_nothing_to_wait_for(bank: LocalCluster) -> None:
    try:
        gone = replidb.connect(bank.connect, autocommit=True)
        gone.execute("BEGIN")
        gone.execute("UPDATE acct SET balance = 0 WHERE owner = 'bob'")
        assert gone.execute("SELECT balance FROM acct WHERE owner = 'bob'").fetchone() == (0,)
        gone.client.close()  # the process dies mid-transaction: no COMMIT, no ROLLBACK
        writer = replidb.connect(bank.connect, autocommit=True, timeout=3.0)
        writer.execute("UPDATE acct SET balance = balance + 1 WHERE owner = 'bob'")  # no wait
        writer.close()
        assert _balance(bank, "bob") == 51  # and the abandoned update never happened
    finally:
        bank.stop_all()


def test_a_transaction_lives_through_a_failover_unless_its_reads_changed(
    bank: LocalCluster,
) -> None:
    try:
        calm = replidb.connect(bank.connect, timeout=20.0)
        busy = replidb.connect(bank.connect, timeout=20.0)
        for conn in (calm, busy):
            conn.execute("UPDATE acct SET balance = balance + 1 WHERE owner = 'bob'")
        calm.execute("SELECT balance FROM acct WHERE owner = 'bob'").fetchone()
        busy.execute("SELECT balance FROM acct WHERE owner = 'alice'").fetchone()
        old = bank.wait_for_leader()
        bank.kill(old)
        bank.wait_for_leader(exclude=old, timeout=15)
        meddler = replidb.connect(bank.connect, autocommit=True, timeout=20.0)
        meddler.execute("UPDATE acct SET balance = 7 WHERE owner = 'alice'")  # busy read it
        meddler.close()
        calm.commit()  # nothing it read changed: it commits on the new leader
        with pytest.raises(replidb.Conflict):
            busy.commit()  # alice changed under it: refused, nothing applied
        assert _balance(bank, "bob") == 51 and _balance(bank, "alice") == 7
        calm.close()
        busy.close()
    finally:
        bank.stop_all()
