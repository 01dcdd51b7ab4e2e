"""Snapshots for partial replicas: a partial replica that installs the leader's
snapshot holds exactly what one that replayed the whole log holds — the subscribed
tables, listed columns and matching rows, with their rowids and the indexes it can
keep — and carries on from the log after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replidb.core.messages import HardState
from replidb.storage import SQLiteStore
from replidb.transport.wire import Statement as S

SPECS = (
    "users(id, name, region) WHERE region = 'eu'",
    "orders",
    "notes(id, body)",
    "log WHERE level >= 2",
)


class Leader:
    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path, row_images="full")
        self.store.persist(HardState(1, "n1"), None, [])

    def write(self, *sql: str) -> None:
        index = self.store.last_index() + 1
        assert self.store.execute_write([S(s) for s in sql], 1, index).data is not None

    def ship(self, follower: SQLiteStore) -> None:
        entries = self.store.entries(follower.last_index() + 1, self.store.last_index(), 1 << 40)
        follower.persist(None, None, entries)
        follower.apply(entries)


def contents(store: SQLiteStore) -> dict[str, Any]:
    """Every object and every row this replica holds (rowids included)."""
    schema = store.writer.execute(
        "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' "
        "AND name NOT LIKE 'replidb_%' ORDER BY name"
    ).fetchall()
    out: dict[str, Any] = {"schema": schema}
    for kind, name, _ in schema:
        if kind == "table":
            rows = store.writer.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid')
            out[name] = [list(row) for row in rows]
    return out


def test_a_partial_replica_installs_its_filtered_subset_of_a_snapshot(tmp_path: Path) -> None:
    leader = Leader(tmp_path / "leader.db")
    leader.write(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, region TEXT, secret TEXT)",
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INTEGER, total REAL)",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, hidden TEXT)",
        "CREATE TABLE log(msg TEXT, level INTEGER)",
        "CREATE TABLE other(x)",
        "CREATE INDEX users_name ON users(name)",
        "CREATE INDEX notes_hidden ON notes(hidden)",  # a column the replica does not hold
        "CREATE VIEW eu AS SELECT * FROM users WHERE region = 'eu'",
    )
    for i in range(1, 201):
        region = ("eu", "us", "ap")[i % 3]
        leader.write(
            f"INSERT INTO users VALUES ({i}, 'user{i}', '{region}', 's{i}')",
            f"INSERT INTO orders(user_id, total) VALUES ({i}, {i * 1.5})",
            f"INSERT INTO notes VALUES ({i}, 'body{i}', 'hidden{i}')",
            f"INSERT INTO log VALUES ('m{i}', {i % 4})",
            f"INSERT INTO other VALUES ({i})",
        )
    leader.write("UPDATE users SET region = 'eu' WHERE id % 10 = 0")  # some rows move in
    leader.write("DELETE FROM log WHERE msg = 'm3'", "DELETE FROM users WHERE id = 3")
    replayed = SQLiteStore(tmp_path / "replayed.db", subscription=SPECS)
    installed = SQLiteStore(tmp_path / "installed.db", subscription=SPECS)
    try:
        leader.ship(replayed)
        index = leader.store.last_index()
        info = leader.store.create_snapshot(tmp_path / "snapshots", index)
        assert info.index == index
        installed.install_snapshot(info.path, info.index, info.term, 0)
        assert installed.applied_index() == index == installed.last_index()
        expected = contents(replayed)
        assert expected["users"] and "other" not in expected  # (the subset is real)
        assert [n for _, n, _ in expected["schema"]] == [
            "log", "notes", "orders", "users", "users_name"
        ]  # fmt: skip
        assert contents(installed) == expected
        # ... and it carries on from the log.
        leader.write("INSERT INTO users VALUES (500, 'late', 'eu', 'x')", "DELETE FROM notes")
        leader.ship(replayed)
        leader.ship(installed)
        assert contents(installed) == contents(replayed)
    finally:
        for store in (replayed, installed, leader.store):
            store.close()
    assert not list(tmp_path.glob("installed.db.filtered*"))
