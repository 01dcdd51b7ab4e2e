"""Integer keys that never collide between leaders (issue #8, item 4).

SQLite gives a new row ``max(rowid) + 1`` — with AUTOINCREMENT too — so two leaders
inserting at the same time hand out the same id (and for a table without a primary
key, whose rows are keyed by rowid, the same row), and settings like MySQL's
``auto_increment_increment``/``offset`` cannot be had from SQLite itself. Instead,
an INSERT that leaves a table's INTEGER PRIMARY KEY (or, without a primary key, its
rowid) to the database is rewritten
(with sqlglot) to take it from ``replidb_next_id('table')``: the smallest id above
every id the table holds (and every one this node handed out) that is ``offset``
modulo ``stride``. Node k of a mesh (in sorted id order, from 1) has offset k, so
ids from different nodes differ modulo the stride and can never be equal; ids stay
increasing on each node, and ``cursor.lastrowid`` is the id given.

Explicit ids are left alone (two leaders inserting the same explicit key is an
insert/insert conflict, resolved like any other). A statement that cannot be
rewritten — several statements in one text, or one sqlglot cannot parse — keeps
SQLite's own choice; ids so chosen may collide, and then resolve as an insert/insert
conflict (one of the two rows is kept).
"""

from __future__ import annotations

import re
from typing import Any, cast

import apsw
import sqlglot
from sqlglot import exp

from replidb.storage.executor import quote_name
from replidb.transport.wire import Statement

__all__ = ["IdStripes"]

_FUNCTION = "replidb_next_id"
_DEFAULT_VALUES = re.compile(
    r"\s*INSERT\s+INTO\s+(\"[^\"]+\"|`[^`]+`|\[[^\]]+\]|[\w]+)\s+DEFAULT\s+VALUES\s*;?\s*",
    re.IGNORECASE,
)


class IdStripes:
    def __init__(self, conn: apsw.Connection, offset: int, stride: int) -> None:
        if not 1 <= offset <= stride:
            raise ValueError(
                f"id offset {offset} must be between 1 and the id stride {stride} "
                "(a mesh can have at most --id-stride nodes)"
            )
        self.conn = conn
        self.offset = offset
        self.stride = stride
        self._issued: dict[str, int] = {}
        self._keys: dict[str, str | None] = {}  # table -> its INTEGER PRIMARY KEY column
        self._rewritten: dict[str, str] = {}  # sql -> rewritten sql
        self._schema = -1
        conn.create_scalar_function(_FUNCTION, cast(Any, self.next_id), 1, deterministic=False)

    def next_id(self, table: Any) -> Any:  # (a SQL function: apsw's types)
        row = self.conn.execute(f"SELECT max(rowid) FROM {quote_name(table)}").fetchone()
        top = max(int(row[0] or 0) if row else 0, self._issued.get(table, 0))
        candidate = top + 1
        candidate += (self.offset - candidate) % self.stride
        self._issued[table] = candidate
        return candidate

    def rewrite(self, statement: Statement) -> Statement:
        if "INSERT" not in statement.sql.upper():
            return statement
        self._check_schema()
        sql = self._rewritten.get(statement.sql)
        if sql is None:
            sql = self._rewrite(statement.sql)
            self._rewritten[statement.sql] = sql
        return statement if sql == statement.sql else Statement(sql, statement.params)

    def _check_schema(self) -> None:
        row = self.conn.execute("PRAGMA schema_version").fetchone()
        version = int(row[0]) if row else 0
        if version != self._schema:
            self._schema = version
            self._keys.clear()
            self._rewritten.clear()

    def _key_column(self, table: str) -> str | None:
        """The column that keys the table's rows by an integer SQLite would choose: its
        INTEGER PRIMARY KEY, or ``rowid`` for a table without a primary key (rows are
        then keyed by rowid, and two nodes' rowid 1 would be one row); None when the
        key is the application's (any other primary key)."""
        if table not in self._keys:
            columns = list(self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,)))
            keys = [c for c in columns if c[5]]
            if len(keys) == 1 and str(keys[0][2]).upper() == "INTEGER":
                self._keys[table] = str(keys[0][1])  # a rowid alias
            elif not keys and columns:
                self._keys[table] = "rowid"
            else:
                self._keys[table] = None
        return self._keys[table]

    def _rewrite(self, sql: str) -> str:
        defaults = _DEFAULT_VALUES.fullmatch(sql)
        if defaults is not None:  # (sqlglot does not take this form)
            table = defaults.group(1).strip('"`[]')
            key = self._key_column(table)
            if key is None:
                return sql
            return (
                f"INSERT INTO {defaults.group(1)}({quote_name(key)}) "
                f"VALUES ({_FUNCTION}('{table.replace(chr(39), chr(39) * 2)}'))"
            )
        try:
            trees = sqlglot.parse(sql, read="sqlite")
        except sqlglot.errors.SqlglotError:
            return sql
        if len(trees) != 1 or not isinstance(trees[0], exp.Insert):
            return sql
        insert = trees[0]
        target = insert.this
        table_node = target.this if isinstance(target, exp.Schema) else target
        if not isinstance(table_node, exp.Table):
            return sql
        table = table_node.name
        key = self._key_column(table)
        if key is None:
            return sql
        call = exp.Anonymous(this=_FUNCTION, expressions=[exp.Literal.string(table)])
        source = insert.expression
        listed = (
            [c.name.lower() for c in target.expressions] if isinstance(target, exp.Schema) else None
        )
        if listed is None and key == "rowid":  # INSERT INTO t VALUES (...): name them
            names = self._columns(table)
            listed = [n.lower() for n in names]
            target = exp.Schema(this=table_node, expressions=[exp.to_identifier(n) for n in names])
            insert.set("this", target)
        if listed is not None and key.lower() not in listed:
            if isinstance(source, exp.Values):
                for row in source.expressions:
                    row.set("expressions", [call.copy(), *row.expressions])
            elif isinstance(source, exp.Select):
                insert.set(
                    "expression",
                    exp.select(call.copy(), exp.Star()).from_(source.subquery("replidb_rows")),
                )
            else:
                return sql
            target.set("expressions", [exp.to_identifier(key), *target.expressions])
            return insert.sql(dialect="sqlite")
        # The key is given: only a literal NULL leaves the choice to us.
        position = listed.index(key.lower()) if listed is not None else self._position(table, key)
        if position is None or not isinstance(source, exp.Values):
            return sql
        changed = False
        for row in source.expressions:
            values = list(row.expressions)
            if position < len(values) and isinstance(values[position], exp.Null):
                values[position] = call.copy()
                row.set("expressions", values)
                changed = True
        return insert.sql(dialect="sqlite") if changed else sql

    def _columns(self, table: str) -> list[str]:
        return [
            str(c[1]) for c in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))
        ]

    def _position(self, table: str, key: str) -> int | None:
        names = [c.lower() for c in self._columns(table)]
        return names.index(key.lower()) if key.lower() in names else None
