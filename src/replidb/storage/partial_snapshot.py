"""Snapshots for partial replicas: the filtered subset, built on the replica.

A partial replica behind the leader's retained log fetches the leader's snapshot like
any follower (a consistent copy of the whole database at one log position) and builds
its own database from it by replaying the copy's contents through its subscription:
each table's ``CREATE`` in the copy's creation order, each row as an ``INSERT`` with
its whole image (rowid-keyed tables keep their rowids), then each index. The
subscription's own rules (storage/subscription.py) decide what is kept — the subscribed
tables, their listed columns, the rows their predicate accepts — so the result is what
replaying the log from its start would have left. Views and triggers are skipped, as
they are when they arrive in the log; so are the ``replidb_*`` tables.

The leader sends the whole copy and the replica filters it, as with the log (a column
list is not a security boundary: the subscription module says why).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw

from replidb.errors import InternalError
from replidb.storage.subscription import PartialApplier
from replidb.storage.subscription_ddl import quote
from replidb.stream.logical import DDL, RowChange

__all__ = ["fill_from_snapshot"]

_SKIPPED_PREFIXES = ("sqlite_", "replidb_")


def fill_from_snapshot(
    conn: apsw.Connection, applier: PartialApplier, snapshot: Path, index: int, term: int
) -> int:
    """Fill the fresh partial-replica database open on ``conn`` (whose subscription
    ``applier`` applies) from the full ``snapshot`` at ``index``/``term``, and record
    that position. Returns how many rows were kept."""
    if not snapshot.is_file():
        raise InternalError(f"snapshot {snapshot} is missing")
    try:
        conn.execute("ATTACH DATABASE ? AS snap", (str(snapshot),))
    except apsw.Error as exc:
        raise InternalError(f"cannot read snapshot {snapshot.name}: {exc}") from None
    kept = 0
    try:
        _check_position(conn, snapshot, index, term)
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        conn.execute("BEGIN IMMEDIATE")
        objects = conn.execute(
            "SELECT type, name, sql FROM snap.sqlite_schema "
            "WHERE sql IS NOT NULL AND type IN ('table', 'index') ORDER BY rowid"
        ).fetchall()
        wanted = [
            (str(kind), str(name), str(sql))
            for kind, name, sql in objects
            if not str(name).lower().startswith(_SKIPPED_PREFIXES)
        ]
        tables = [name for kind, name, _ in wanted if kind == "table"]
        applier.replay(DDL(sql) for kind, _, sql in wanted if kind == "table")
        for table in tables:
            if applier.subscribes(table):
                applier.replay(_inserts(conn, table))
                kept += int(conn.execute(f"SELECT count(*) FROM main.{quote(table)}").get or 0)
        applier.replay(DDL(sql) for kind, _, sql in wanted if kind == "index")
        conn.executemany(
            "INSERT OR REPLACE INTO main.replidb_meta(key, value) VALUES(?, ?)",
            [("applied_index", index), ("snapshot_index", index), ("snapshot_term", term)],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        conn.execute("DETACH DATABASE snap")
    return kept


def _check_position(conn: apsw.Connection, snapshot: Path, index: int, term: int) -> None:
    try:
        rows = conn.execute("SELECT key, value FROM snap.replidb_meta").fetchall()
        meta: dict[object, object] = {row[0]: row[1] for row in rows}
    except apsw.Error as exc:
        raise InternalError(f"{snapshot.name} is not a replidb snapshot: {exc}") from None
    found = (meta.get("snapshot_index"), meta.get("snapshot_term"), meta.get("applied_index"))
    if found != (index, term, index):
        raise InternalError(
            f"{snapshot.name} holds position {found[0]}/{found[1]} (applied {found[2]}), "
            f"not the announced {index}/{term}"
        )


def _inserts(conn: apsw.Connection, table: str) -> Iterator[RowChange]:
    """Every row of the copy's ``table`` as the INSERT the log would carry: keyed by
    its primary key, or by its hidden rowid (carried as the first column) if it
    declares none, as the leader's changesets key it."""
    info = conn.execute(f"PRAGMA snap.table_info({quote(table)})").fetchall()
    declared = [str(row[1]) for row in info]
    positions = sorted((int(str(row[5])), str(row[1])) for row in info)  # (pk position, name)
    keys = [name for position, name in positions if position > 0]
    columns = ", ".join(quote(c) for c in declared)
    if keys:
        names, select = declared, f"SELECT {columns} FROM snap.{quote(table)}"
    else:
        names, keys = ["rowid", *declared], ["rowid"]
        select = f"SELECT _rowid_, {columns} FROM snap.{quote(table)}"
    for row in conn.execute(select):
        image = dict(zip(names, row, strict=True))
        yield RowChange(table, "INSERT", {k: image[k] for k in keys}, None, image)
