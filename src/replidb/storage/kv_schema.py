"""A leaderless replica's tables as keys see them (issue #9): each table's primary key
(names and affinities, in key order), and DDL — run in order, recorded in
``replidb_kv_schema`` so every replica can run what it lacks, and refused when it
would give a table a constraint replicas cannot keep alike.

A secondary UNIQUE constraint is refused: two replicas taking two rows with the same
unique value under different keys (concurrently, on different coordinators) would
each have to drop one of them, and which one would depend on arrival order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import apsw

from replidb.errors import BadRequest
from replidb.storage.executor import translate
from replidb.transport.kv_wire import TABLE_INFO_SQL, key_columns

__all__ = ["KvSchema"]

log = logging.getLogger("replidb.storage")


class KvSchema:
    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self._keys: dict[str, tuple[list[str], list[str]]] = {}
        self._columns: dict[str, list[str]] = {}

    def key_columns(self, table: str) -> tuple[list[str], list[str]]:
        """(names, affinities) of the table's primary key, in key order; BadRequest if
        the table is unknown or has none."""
        found = self._keys.get(table)
        if found is not None:
            return found
        info: list[Any] = self.conn.execute(TABLE_INFO_SQL, (table,)).fetchall()
        found = self._keys[table] = key_columns(table, info)
        return found

    def columns(self, table: str) -> list[str]:
        found = self._columns.get(table)
        if found is None:
            rows: list[Any] = self.conn.execute(
                "SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,)
            ).fetchall()
            found = self._columns[table] = [str(name) for (name,) in rows]
        return found

    def statements(self) -> list[str]:
        """Every DDL statement run here, in order, as "ID SQL" (the id names one run of
        it: a table dropped and created again with the same text is two runs)."""
        rows: list[Any] = self.conn.execute(
            "SELECT id, sql FROM replidb_kv_schema ORDER BY seq"
        ).fetchall()
        return [f"{ddl_id} {sql}" for ddl_id, sql in rows]

    def run(self, statements: Sequence[str], strict: bool, origin: str = "") -> list[str]:
        """Run DDL inside the caller's transaction; the statements run. ``strict``: a
        client's request (plain SQL, each run recorded under a new id made from
        ``origin``); a failing statement raises. Otherwise: another node's schema
        ("ID SQL" items): what has not run here runs in order, and a statement that
        fails (e.g. the same table created on two nodes at once) is logged and
        recorded anyway, so it is not retried forever."""
        known = {item.split(" ", 1)[0] for item in self.statements()}
        done = []
        for item in statements:
            if strict:
                ddl_id, sql = f"{origin}-{len(known) + 1}", item
            else:
                ddl_id, _, sql = item.partition(" ")
                if ddl_id in known or not sql:
                    continue
            failed = None
            try:
                self.conn.execute("SAVEPOINT ddl")
                self.conn.execute(sql)
                self._refuse_secondary_unique()
                self.conn.execute("RELEASE ddl")
            except (apsw.Error, BadRequest) as exc:
                self.conn.execute("ROLLBACK TO ddl")
                self.conn.execute("RELEASE ddl")
                if strict:
                    raise (exc if isinstance(exc, BadRequest) else translate(exc)) from None
                failed = str(exc)
                log.warning("schema from another node failed here: %s: %s", sql, exc)
            self.conn.execute(
                "INSERT INTO replidb_kv_schema(id, sql, failed) VALUES(?, ?, ?)",
                (ddl_id, sql, failed),
            )
            known.add(ddl_id)
            done.append(sql)
        if done:
            self._keys.clear()
            self._columns.clear()
            # Versions of rows whose table is gone (DROP TABLE) go with it.
            gone = "(SELECT name FROM sqlite_master WHERE type = 'table')"
            self.conn.execute(f"DELETE FROM replidb_kv WHERE tbl NOT IN {gone}")
            self.conn.execute(f"DELETE FROM replidb_kv_hints WHERE tbl NOT IN {gone}")
        return done

    def failures(self) -> tuple[int, str]:
        """How many statements from other nodes failed here, and the latest: the
        schema here differs from theirs until someone fixes it."""
        rows: list[Any] = self.conn.execute(
            "SELECT sql, failed FROM replidb_kv_schema WHERE failed IS NOT NULL ORDER BY seq"
        ).fetchall()
        return len(rows), (f"{rows[-1][0]}: {rows[-1][1]}" if rows else "")

    def _refuse_secondary_unique(self) -> None:
        row = self.conn.execute(
            "SELECT m.name FROM sqlite_master m, pragma_index_list(m.name) i "
            "WHERE m.type = 'table' AND m.name NOT LIKE 'replidb_%' AND m.name NOT LIKE "
            "'sqlite_%' AND i.\"unique\" AND i.origin != 'pk' LIMIT 1"
        ).fetchone()
        if row is not None:
            raise BadRequest(
                f"table {row[0]}: a leaderless table cannot have UNIQUE constraints besides "
                "its primary key (replicas taking concurrent writes could not keep them alike)"
            )
