"""The `statement` and `mixed` stream formats at the storage level: a leader store runs
client SQL, followers replay the logged statements, and every replica holds the same
values, non-deterministic functions included; what cannot replay is refused (or, in
mixed, shipped as rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replidb.core.messages import Entry, EntryKind
from replidb.errors import InternalError, SQLError
from replidb.storage import SQLiteStore
from replidb.stream.logical import Changes, Replay, decode_record
from replidb.transport.wire import Statement as S

SCHEMA = [
    S("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, r INTEGER, b BLOB, ts TEXT)"),
    S("CREATE TABLE d(k TEXT PRIMARY KEY, at TEXT DEFAULT CURRENT_TIMESTAMP, n INTEGER)"),
    S("CREATE TABLE audit(id INTEGER PRIMARY KEY, t_id INTEGER, note TEXT)"),
    S(
        "CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN "
        "INSERT INTO audit(t_id, note) VALUES (new.id, 'inserted ' || new.r); END"
    ),
]
WORKLOAD = [
    [S("INSERT INTO t(r, b, ts) VALUES (random(), randomblob(8), datetime('now'))")],
    [
        S("INSERT INTO t(r, ts) VALUES (abs(random()) % 100, CURRENT_TIMESTAMP)"),
        S("INSERT INTO d(k, n) VALUES ('x', last_insert_rowid())"),
        S("UPDATE d SET n = n + changes() WHERE k = 'x'"),
    ],
    [S("INSERT INTO d(k, n) VALUES (?, ?)", ["y", 7]), S("DELETE FROM t WHERE id = 1")],
    [S("UPDATE t SET ts = julianday('now'), r = random() WHERE id > 1")],
    [S("INSERT INTO t(r) VALUES (unixepoch())")],
]


def _dump(store: SQLiteStore) -> list[list[list[object]]]:
    queries = ["SELECT * FROM t", "SELECT * FROM d", "SELECT * FROM audit"]
    queries.append("SELECT name, seq FROM sqlite_sequence ORDER BY name")
    return [r.rows for r in store.execute_read([S(q) for q in queries])]


def _replicate(tmp_path: Path, stream: str, batches: list[list[S]]) -> list[SQLiteStore]:
    times = iter(range(1_700_000_000, 1_800_000_000, 3))
    leader = SQLiteStore(tmp_path / "leader.db", stream=stream, clock=lambda: float(next(times)))
    followers = [SQLiteStore(tmp_path / f"f{i}.db", stream=stream) for i in range(2)]
    for index, batch in enumerate(batches, start=1):
        outcome = leader.execute_write(batch, term=1, index=index)
        assert outcome.data is not None
        entry = Entry(1, index, EntryKind.WRITE, outcome.data)
        for follower in followers:
            follower.persist(None, None, [entry])
            follower.apply([entry])
    return [leader, *followers]


@pytest.mark.parametrize("stream", ["statement", "mixed"])
def test_non_deterministic_sql_gives_the_same_values_on_every_replica(
    tmp_path: Path, stream: str
) -> None:
    stores = _replicate(tmp_path, stream, [SCHEMA, *WORKLOAD])
    leader = _dump(stores[0])
    t, d, audit, sequences = leader
    assert len(t) == 2 and len(audit) == 3 and sequences == [["audit", 3], ["t", 3]]
    assert t[0][3] is not None and all(row[1] is not None for row in d)
    assert {row[0]: row[2] for row in d}["x"] == 3  # last_insert_rowid() 2 + changes() 1
    for follower in stores[1:]:
        assert _dump(follower) == leader
    for store in stores:
        store.close()


def test_statement_records_carry_sql_and_context_not_rows(tmp_path: Path) -> None:
    leader = SQLiteStore(tmp_path / "l.db", stream="statement", clock=lambda: 1_700_000_000.5)
    leader.execute_write(SCHEMA, 1, 1)
    outcome = leader.execute_write(WORKLOAD[0], 1, 2, client_id="c", seq=1)
    assert outcome.data is not None
    segments = decode_record(outcome.data).segments
    replay = segments[0]
    assert isinstance(replay, Replay)
    assert replay.statements[0].sql == WORKLOAD[0][0].sql
    assert replay.now_ms == 1_700_000_000_500 and replay.digest
    # only replidb's own bookkeeping (the client's result, the id lease) travels as rows
    assert all(isinstance(s, Changes) for s in segments[1:])
    ts = leader.execute_read([S("SELECT ts FROM t")])[0].rows[0][0]
    assert ts == "2023-11-14 22:13:20"
    leader.close()


# This SQLite build has no UPDATE/DELETE ... LIMIT (SQLITE_ENABLE_UPDATE_DELETE_LIMIT);
# the statement stream still names the construct before SQLite gets to reject it.
NO_LIMIT = 'near "LIMIT": syntax error'


@pytest.mark.parametrize(
    ("sql", "named", "mixed_error"),
    [
        ("UPDATE t SET r = 1 LIMIT 1", "UPDATE ... LIMIT without ORDER BY", NO_LIMIT),
        ("DELETE FROM t WHERE r > 0 LIMIT 2", "DELETE ... LIMIT without ORDER BY", NO_LIMIT),
        ("INSERT INTO t(ts) VALUES (sqlite_version())", "sqlite_version()", None),
        ("INSERT INTO t(r) VALUES (my_udf(1))", "my_udf()", "no such function: my_udf"),
        ("INSERT INTO audit(note) SELECT ts FROM t", "INSERT ... SELECT without ORDER BY", None),
        ("INSERT INTO d(k, n) VALUES ('z', total_changes())", "total_changes()", None),
        (
            "CREATE TRIGGER r AFTER UPDATE ON t BEGIN UPDATE d SET n = random(); END",
            "random in a trigger",
            None,
        ),
        ("CREATE VIEW v AS SELECT random() AS r", "random() in a view", None),
    ],
)
def test_statement_refuses_what_cannot_replay_and_mixed_ships_rows(
    tmp_path: Path, sql: str, named: str, mixed_error: str | None
) -> None:
    strict = SQLiteStore(tmp_path / "s.db", stream="statement")
    strict.execute_write(SCHEMA, 1, 1)
    with pytest.raises(SQLError, match="statement stream cannot replicate") as info:
        strict.execute_write([S(sql)], 1, 2)
    assert named in str(info.value) and "\n" not in str(info.value)
    assert strict.last_index() == 1  # nothing logged
    mixed = SQLiteStore(tmp_path / "m.db", stream="mixed")
    mixed.execute_write(SCHEMA, 1, 1)
    mixed.execute_write([S("INSERT INTO t(ts) VALUES ('row')")], 1, 2)
    if mixed_error is not None:
        with pytest.raises(SQLError, match=mixed_error):
            mixed.execute_write([S(sql)], 1, 3)
    else:
        outcome = mixed.execute_write([S(sql)], 1, 3)
        assert outcome.data is not None
        assert not any(isinstance(s, Replay) for s in decode_record(outcome.data).segments)
    strict.close()
    mixed.close()


def test_a_replica_whose_replay_diverges_stops_instead_of_drifting(tmp_path: Path) -> None:
    leader, follower = (SQLiteStore(tmp_path / f"{n}.db", stream="statement") for n in "ab")
    entries = []
    for index, batch in enumerate([SCHEMA, [S("INSERT INTO d(k, n) VALUES ('a', 1)")]], 1):
        outcome = leader.execute_write(batch, 1, index)
        assert outcome.data is not None
        entries.append(Entry(1, index, EntryKind.WRITE, outcome.data))
    follower.persist(None, None, entries)
    follower.apply(entries[:1])
    follower.writer.execute("INSERT INTO d(k, n) VALUES ('a', 99)")  # drift behind its back
    with pytest.raises(InternalError, match="diverged"):
        follower.apply(entries[1:])
    leader.close()
    follower.close()


def test_a_deposed_statement_leader_rolls_back_its_own_run(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db", stream="statement")
    store.execute_write(SCHEMA, 1, 1)
    before = _dump(store)
    store.execute_write(WORKLOAD[0], 1, 2)
    store.execute_write(WORKLOAD[1], 1, 3)
    store.persist(None, 2, [])
    # rows back as they were; AUTOINCREMENT counters stay raised: ids a discarded
    # write handed out are never handed out again
    assert _dump(store)[:3] == before[:3]
    rows = store.execute_read([S("SELECT idx, changes FROM replidb_discarded ORDER BY idx")])
    assert [r[0] for r in rows[0].rows] == [2, 3] and '"op":"INSERT"' in rows[0].rows[0][1]
    store.close()


def test_full_row_images_give_every_update_its_whole_row(tmp_path: Path) -> None:
    from replidb.stream.logical import RowChange, row_changes

    store = SQLiteStore(tmp_path / "f.db", row_images="full")
    store.execute_write([S("CREATE TABLE p(id INTEGER PRIMARY KEY, a, b)")], 1, 1)
    store.execute_write([S("CREATE TABLE q(a, b)"), S("INSERT INTO q VALUES (1, 2)")], 1, 2)
    store.execute_write([S("INSERT INTO p VALUES (1, 'x', 'y')")], 1, 3)
    outcome = store.execute_write(
        [S("UPDATE p SET b = 'z' WHERE id = 1"), S("UPDATE q SET b = 3")], 1, 4
    )
    assert outcome.data is not None
    changes = [c for c in row_changes(decode_record(outcome.data)) if isinstance(c, RowChange)]
    updates = {c.table: c for c in changes if c.op == "UPDATE"}
    assert updates["p"].after == {"id": 1, "a": "x", "b": "z"} and updates["p"].after_complete
    assert updates["q"].after == {"rowid": 1, "a": 1, "b": 3}
    store.close()
