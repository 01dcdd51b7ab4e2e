"""The SQLite store on real files: capture, apply, roll back, refuse."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from replidb.core.messages import Entry, EntryKind
from replidb.errors import ConstraintError, SQLError
from replidb.storage import NeedsWrite, SQLiteStore
from replidb.stream.logical import DDL, Changes, decode_record
from replidb.transport.wire import Statement as S


@pytest.fixture
def pair(tmp_path: Path) -> tuple[SQLiteStore, SQLiteStore]:
    leader, follower = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")
    yield leader, follower
    leader.close()
    follower.close()


def _ship(leader: SQLiteStore, follower: SQLiteStore) -> None:
    """What replication does: persist the leader's new entries, then apply them."""
    entries = leader.entries(follower.last_index() + 1, leader.last_index(), 1 << 30)
    follower.persist(None, None, entries)
    follower.apply(entries)


def _rows(store: SQLiteStore, sql: str) -> list[list[object]]:
    return store.execute_read([S(sql)])[0].rows


def test_ddl_and_changes_replay_in_order(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    leader, follower = pair
    outcome = leader.execute_write(
        [
            S("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"),
            S("INSERT INTO t(v) VALUES (?), (?)", ["a", "b"]),
            S("ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7"),
            S("UPDATE t SET w = id * 10"),
        ],
        term=1,
        index=1,
    )
    assert outcome.data is not None
    segments = decode_record(outcome.data).segments
    kinds = [type(s).__name__ for s in segments]
    # ... and a last segment of bookkeeping: the id lease the INSERT raised.
    assert kinds == ["DDL", "Changes", "DDL", "Changes", "Changes"]
    last = segments[-1]
    assert isinstance(last, Changes)
    assert {c.name for c in apsw.Changeset.iter(last.changeset)} == {"replidb_rowid_leases"}
    _ship(leader, follower)
    assert _rows(follower, "SELECT * FROM t ORDER BY id") == [[1, "a", 10], [2, "b", 20]]
    assert follower.applied_index() == 1


def test_tables_without_primary_key_and_triggers(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    leader, follower = pair
    leader.execute_write(
        [
            S("CREATE TABLE plain(v TEXT)"),
            S("CREATE TABLE audit(n INTEGER PRIMARY KEY, v TEXT)"),
            S(
                "CREATE TRIGGER tr AFTER INSERT ON plain "
                "BEGIN INSERT INTO audit(v) VALUES (new.v); END"
            ),
        ],
        1,
        1,
    )
    leader.execute_write([S("INSERT INTO plain VALUES ('x'), ('y')")], 1, 2)
    _ship(leader, follower)
    # The trigger ran once, on the leader; its effect arrives as rows, not re-fired.
    assert _rows(follower, "SELECT v FROM audit ORDER BY n") == [["x"], ["y"]]
    assert _rows(follower, "SELECT rowid, v FROM plain ORDER BY rowid") == [[1, "x"], [2, "y"]]


def test_truncating_applied_entries_rolls_them_back_and_keeps_them(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    leader, _ = pair
    leader.execute_write([S("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")], 1, 1)
    leader.execute_write([S("INSERT INTO t VALUES (1, 'kept')")], 1, 2)
    leader.execute_write([S("INSERT INTO t VALUES (2, 'lost'); UPDATE t SET v='changed'")], 1, 3)
    leader.execute_write([S("CREATE TABLE extra(x)"), S("INSERT INTO extra VALUES (1)")], 1, 4)
    # A new leader's log differs from index 3 on: this node must undo 3 and 4.
    leader.persist(None, 3, [Entry(2, 3, EntryKind.NOOP)])
    assert _rows(leader, "SELECT * FROM t") == [[1, "kept"]]
    assert _rows(leader, "SELECT count(*) FROM sqlite_master WHERE name='extra'") == [[0]]
    assert leader.applied_index() == 2
    assert leader.discarded_count() == 2
    assert _rows(leader, "SELECT idx, term FROM replidb_discarded ORDER BY idx") == [[3, 1], [4, 1]]
    # What was discarded is queryable: which rows, in which table, before and after.
    described = _rows(
        leader,
        "SELECT j.value ->> 'op', j.value ->> 'after' FROM replidb_discarded, "
        "json_each(replidb_discarded.changes) AS j WHERE idx = 3 ORDER BY j.key",
    )
    assert sorted(described) == [
        ["INSERT", '{"id":2,"v":"changed"}'],
        ["UPDATE", '{"v":"changed"}'],
    ]
    assert leader.last_index() == 3 and leader.term(3) == 2


def test_retried_write_is_applied_once(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    leader, follower = pair
    leader.execute_write([S("CREATE TABLE t(id INTEGER PRIMARY KEY)")], 1, 1)
    first = leader.execute_write([S("INSERT INTO t DEFAULT VALUES")], 1, 2, "client-a", 1)
    again = leader.execute_write([S("INSERT INTO t DEFAULT VALUES")], 1, 3, "client-a", 1)
    assert first.data is not None and not first.duplicate
    assert again.duplicate and again.data is None and again.results == first.results
    assert _rows(leader, "SELECT count(*) FROM t") == [[1]]
    _ship(leader, follower)  # the session row replicates: a new leader would know too
    assert _rows(follower, "SELECT seq FROM replidb_client_sessions") == [[1]]
    segments = decode_record(first.data).segments
    assert all(isinstance(s, Changes | DDL) for s in segments)


def test_reads_never_write_and_bad_sql_is_one_line(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    leader, _ = pair
    leader.execute_write([S("CREATE TABLE t(id INTEGER PRIMARY KEY)")], 1, 1)
    with pytest.raises(NeedsWrite):
        leader.execute_read([S("INSERT INTO t VALUES (1)")])
    refusals = {
        "BEGIN": "transaction control",
        "INSERT INTO replidb_log VALUES (9, 9, 1, x'00')": "belongs to replidb",
        "PRAGMA journal_mode=DELETE": "PRAGMA journal_mode",
        "ATTACH 'x.db' AS x": "ATTACH",
        "SELEC 1": 'near "SELEC": syntax error',
        "INSERT INTO nowhere VALUES (1)": "no such table: nowhere",
    }
    for sql, message in refusals.items():
        with pytest.raises(SQLError) as info:
            leader.execute_write([S(sql)], 1, 2)
        assert message in str(info.value) and "\n" not in str(info.value)
    leader.execute_write([S("INSERT INTO t VALUES (1)")], 1, 2)
    with pytest.raises(ConstraintError, match=r"UNIQUE constraint failed: t\.id"):
        leader.execute_write([S("INSERT INTO t VALUES (1)")], 1, 3)
    assert leader.last_index() == 2  # nothing failed was logged
    assert _rows(leader, "PRAGMA table_info(t)")[0][1] == "id"  # reading pragmas is fine


def test_log_and_hard_state_survive_reopen(tmp_path: Path) -> None:
    from replidb.core.messages import HardState

    store = SQLiteStore(tmp_path / "n.db")
    store.persist(HardState(5, "n2"), None, [Entry(5, 1, EntryKind.NOOP), Entry(5, 2, 1, b"x")])
    store.close()
    reopened = SQLiteStore(tmp_path / "n.db")
    assert reopened.hard_state() == HardState(5, "n2")
    assert reopened.last_index() == 2 and reopened.term(2) == 5
    assert [e.index for e in reopened.entries(1, 2, 0)] == [1]  # byte budget: at least one
    reopened.close()
