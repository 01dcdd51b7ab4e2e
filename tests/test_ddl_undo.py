"""A deposed leader rolls back DDL too: schema and data come back as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from replidb.core.messages import Entry, EntryKind
from replidb.storage import SQLiteStore
from replidb.storage.ddl_undo import plan
from replidb.transport.wire import Statement as S

BASE = [
    S(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w INTEGER DEFAULT 5, "
        "n TEXT NOT NULL DEFAULT '')"
    ),
    S("CREATE INDEX t_v ON t(v)"),
    S("CREATE TRIGGER t_audit AFTER UPDATE ON t BEGIN SELECT 1; END"),
    S("INSERT INTO t(v, w, n) VALUES ('a', 1, 'x'), ('b', NULL, 'y'), ('c', 3, 'z')"),
    S("CREATE VIEW tv AS SELECT v FROM t"),
    S("ALTER TABLE t ADD COLUMN n2 INTEGER DEFAULT 7"),
    S("UPDATE t SET n2 = id * 10 WHERE id > 1"),
]


def _state(store: SQLiteStore) -> tuple[list[list[object]], list[list[object]]]:
    # A rename rewrites the schema text with quoted names ("t"): the same schema.
    schema = store.execute_read(
        [
            S(
                "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'replidb_%' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY type, name"
            )
        ]
    )[0].rows
    rows = store.execute_read([S("SELECT * FROM t ORDER BY id")])[0].rows
    unquoted = [[str(cell).replace('"', "") for cell in row] for row in schema]
    return unquoted, rows


@pytest.mark.parametrize(
    "ddl",
    [
        "DROP TABLE t",
        "DROP TABLE IF EXISTS t",
        "ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'e'",
        "ALTER TABLE t DROP COLUMN n2",
        "ALTER TABLE t RENAME COLUMN v TO value",
        "ALTER TABLE t RENAME TO renamed",
        "DROP INDEX t_v",
        "DROP VIEW tv",
        "DROP TRIGGER t_audit",
        "CREATE INDEX t_w ON t(w)",
        "CREATE TABLE IF NOT EXISTS t(x)",
    ],
)
def test_rolling_back_ddl_restores_schema_and_rows(tmp_path: Path, ddl: str) -> None:
    store = SQLiteStore(tmp_path / "n.db")
    store.execute_write(BASE, term=1, index=1)
    before = _state(store)
    # The DDL, and a later write, both to be rolled back.
    store.execute_write([S(ddl)], term=1, index=2)
    store.execute_write([S("CREATE TABLE other(x)"), S("INSERT INTO other VALUES (1)")], 1, 3)
    store.persist(None, 2, [Entry(2, 2, EntryKind.NOOP)])
    assert _state(store) == before
    assert store.discarded_count() == 2
    store.close()


def test_ddl_that_cannot_be_reversed_is_marked_so(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "n.db")
    store.execute_write(BASE, term=1, index=1)
    assert plan(store.writer, "ALTER TABLE t DROP COLUMN n") is None  # NOT NULL
    assert plan(store.writer, "ALTER TABLE t DROP COLUMN w") is None  # not the last one
    assert plan(store.writer, "CREATE VIRTUAL TABLE f USING fts5(x)") is not None
    assert plan(store.writer, "PRAGMA foo") is None
    store.close()
