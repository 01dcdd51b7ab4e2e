"""Ids handed out by discarded writes are never handed out again (storage/rowid_guard)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replidb.storage import SQLiteStore
from replidb.storage.rowid_guard import LEASE_CHUNK, add_autoincrement, split_sql
from replidb.transport.wire import Statement as S


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
        ),
        (
            "create table if not exists t (id integer primary key desc on conflict replace, v)",
            "create table if not exists t (id integer primary key desc on conflict replace "
            "AUTOINCREMENT, v)",
        ),
        (
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT)",
        ),
        (
            "CREATE TABLE t(id INTEGER, v TEXT DEFAULT 'INTEGER PRIMARY KEY', PRIMARY KEY(id))",
            "CREATE TABLE t(id INTEGER, v TEXT DEFAULT 'INTEGER PRIMARY KEY', PRIMARY KEY(id))",
        ),
        (
            "CREATE TABLE t(id INTEGER PRIMARY KEY) WITHOUT ROWID",
            "CREATE TABLE t(id INTEGER PRIMARY KEY) WITHOUT ROWID",
        ),
        (
            "CREATE TEMP TABLE t(id INTEGER PRIMARY KEY)",
            "CREATE TEMP TABLE t(id INTEGER PRIMARY KEY)",
        ),
        ("CREATE TABLE t(k TEXT PRIMARY KEY)", "CREATE TABLE t(k TEXT PRIMARY KEY)"),
        ("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)"),
    ],
)
def test_integer_primary_keys_become_autoincrement(sql: str, expected: str) -> None:
    assert add_autoincrement(sql) == expected


def test_split_sql_keeps_trigger_bodies_whole() -> None:
    text = (
        "CREATE TABLE a(x); CREATE TRIGGER tr AFTER INSERT ON a BEGIN "
        "INSERT INTO a VALUES (1); SELECT ';'; END; SELECT 2"
    )
    assert [p.strip() for p in split_sql(text)] == [
        "CREATE TABLE a(x);",
        "CREATE TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO a VALUES (1); SELECT ';'; END;",
        "SELECT 2",
    ]


def _ship(source: SQLiteStore, target: SQLiteStore, upto: int) -> None:
    entries = source.entries(target.last_index() + 1, upto, 1 << 30)
    target.persist(None, None, entries)
    target.apply(entries)


def test_a_new_leader_never_reuses_ids_a_discarded_write_handed_out(tmp_path: Path) -> None:
    old, new = SQLiteStore(tmp_path / "old.db"), SQLiteStore(tmp_path / "new.db")
    old.execute_write([S("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")], 1, 1)
    first = old.execute_write([S("INSERT INTO users(name) VALUES ('ann')")], 1, 2)
    assert first.needs_commit  # the first id raised the lease: it must commit first
    _ship(old, new, 2)  # committed: both hold the lease (1 + LEASE_CHUNK)
    # The old leader hands out ids 2 and 3 under the lease (no commit needed), then
    # dies before anyone else has them: a failover discards them.
    for index, name in ((3, "bob"), (4, "cyd")):
        outcome = old.execute_write([S("INSERT INTO users(name) VALUES (?)", [name])], 1, index)
        assert not outcome.needs_commit
    assert [r[0] for r in old.execute_read([S("SELECT id FROM users")])[0].rows] == [1, 2, 3]
    # The new leader raises its floor before its first write.
    assert new.raise_rowid_floors() == 1
    reply = new.execute_write([S("INSERT INTO users(name) VALUES ('dan')")], 2, 3)
    assert reply.results[0].lastrowid == 1 + LEASE_CHUNK + 1  # never 2 or 3
    # Without the floor, SQLite would have picked 2: the id bob was given.
    plain = SQLiteStore(tmp_path / "plain.db")
    plain.execute_write([S("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")], 1, 1)
    plain.execute_write([S("INSERT INTO users(name) VALUES ('ann')")], 1, 2)
    assert (
        plain.execute_write([S("INSERT INTO users(name) VALUES ('x')")], 1, 3).results[0].lastrowid
        == 2
    )
    for store in (old, new, plain):
        store.close()


def test_the_old_leader_rolls_back_and_converges(tmp_path: Path) -> None:
    old, new = SQLiteStore(tmp_path / "old.db"), SQLiteStore(tmp_path / "new.db")
    old.execute_write([S("CREATE TABLE u(id INTEGER PRIMARY KEY, name TEXT)")], 1, 1)
    old.execute_write([S("INSERT INTO u(name) VALUES ('ann')")], 1, 2)
    _ship(old, new, 2)
    old.execute_write([S("INSERT INTO u(name) VALUES ('bob')")], 1, 3)
    new.raise_rowid_floors()
    new.execute_write([S("INSERT INTO u(name) VALUES ('dan')")], 2, 3)
    # The old leader rejoins: its index 3 is replaced by the new leader's.
    old.persist(None, 3, [])
    _ship(new, old, 3)
    rows = old.execute_read([S("SELECT id, name FROM u ORDER BY id")])[0].rows
    assert rows == new.execute_read([S("SELECT id, name FROM u ORDER BY id")])[0].rows
    assert [name for _, name in rows] == ["ann", "dan"]
    assert old.discarded_count() == 1
