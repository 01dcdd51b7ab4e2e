"""Partial replication with PostgreSQL 15's semantics: a replica that holds some tables,
the rows of them that match a predicate, and some of their columns.

This module is the one place that owns a partial replica's transitions. A
subscription is a list of table specs::

    orders                                   the whole table
    users(id, name)                          a column list
    users WHERE region = 'eu'                a row filter
    "User Data"(id, name, region) WHERE region = 'eu' AND id > 10

Per change of a subscribed table (every other table, and every ``replidb_*`` table, is
skipped; "matches" means the predicate is true, so false and NULL both mean no):

    INSERT    new row matches                      insert its listed columns
    DELETE    this replica holds the row           delete it
    UPDATE    held, new image matches              update the listed columns
              held, new image does not match       delete the row
              not held, new image matches          insert the listed columns
              neither                              nothing
    (a table without a predicate: UPDATE sets the changed listed columns by key)

"Held" stands in for "the old row matched": every change to a row passes through here,
and each one leaves the row held exactly when its newest image matches, so the row is
held iff the image before this change matched. The leader's before-image is not needed
(a minimal changeset does not even carry it whole); the new image must be complete,
which the leader provides with ``--row-images full``. A table without a predicate needs
neither: ``UPDATE`` applies the changed columns by key.

Predicates are judged by SQLite itself, so their semantics are exactly the leader's:

- When the subscription is parsed, the predicate must be accepted as a partial index's
  WHERE clause over the row, where SQLite allows only deterministic expressions: no
  subqueries, parameters, random(), 'now', CURRENT_*, 'localtime', changes() or unknown
  functions (PostgreSQL requires immutable row filters for the same reason: every
  replica must judge a row alike).
- A change is judged on ``replidb_filter_<table>``, kept in the replica's database with
  the leader's whole definition of the table and no rows: the image is inserted, the
  predicate asked, the row deleted. Its columns have the leader's declared types and
  collations, so ``n > '3'`` and ``name = 'bob'`` compare as in the leader's own
  ``SELECT ... WHERE`` (bare ``? AS n`` values would have neither affinity nor
  collation). It carries the predicate as a partial index, so SQLite refuses a
  non-deterministic use at every evaluation; it is schema in the replica's own file, so
  it commits and rolls back with the caller's transaction and survives a restart.

DDL, in the record's order: ``CREATE TABLE`` of a subscribed table creates it with the
listed columns only (table constraints that mention a column left out are dropped; a
primary-key column may not be left out, as identity columns may not in PostgreSQL);
``ALTER TABLE ... ADD COLUMN`` applies if the column is listed, ``DROP``/``RENAME
COLUMN`` if the replica holds the column (a renamed listed column keeps replicating: the
kept columns are read from the replica's own table, which also survives a restart);
``DROP TABLE`` drops; ``CREATE INDEX`` applies if every column it names is held;
``DROP INDEX`` applies if the replica has the index. Views, triggers and everything on
other tables are skipped: a partial replica holds data, not the application's logic
(the effects of the leader's triggers arrive as row changes anyway).

Refused with ``InternalError`` (the node stops rather than hold wrong data): statement
records (``--stream logical`` is needed), an UPDATE without a complete image on a table
with a predicate, a primary-key column left out, a predicate naming a column the table
does not have (also after a DROP or RENAME COLUMN), ``CREATE TABLE ... AS SELECT`` and
virtual tables, a change to a table the replica does not hold (subscribed after the
leader created it: there is no initial copy, so it needs a resync), a predicate other
than the one the replica was built with, and ``ALTER TABLE ... RENAME TO`` from or to a
subscribed name: following a rename would need the subscription itself to change
across restarts, so the operator re-subscribes instead (this also refuses SQLite's
create-copy-drop-rename migration pattern on a subscribed table). Changing a column
list is not detected: it needs a resync too.

A column list is not a security boundary (PostgreSQL's documentation says the same):
the whole record, every column of every table, still travels to this node and stays in
its log. It saves the replica's tables the space, nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import apsw

from replidb.errors import InternalError
from replidb.storage.subscription_ddl import Token, parse_ddl, quote, rewrite_create, tokens
from replidb.stream.logical import DDL, Replay, RowChange, WriteRecord, row_changes

__all__ = ["PartialApplier", "Subscription", "TableFilter", "parse_subscription"]

_FILTER_PREFIX = "replidb_filter_"
_MAX_COLUMNS = 2000  # SQLite's default limit
_INTERNAL_PREFIXES = ("replidb_", "sqlite_")


@dataclass(frozen=True)
class TableFilter:
    columns: tuple[str, ...] | None = None  # None: every column, present and future
    where: str | None = None  # None: every row

    def describe(self, table: str) -> str:
        text = _show(table)
        if self.columns is not None:
            text += "(" + ", ".join(map(_show, self.columns)) + ")"
        if self.where is not None:
            text += " WHERE " + " ".join(self.where.split())
        return text


@dataclass(frozen=True)
class Subscription:
    tables: dict[str, TableFilter]

    def describe(self) -> str:
        """One line for logs and status: ``2 tables: orders; users(id, name) WHERE ...``."""
        count = f"{len(self.tables)} table{'' if len(self.tables) == 1 else 's'}"
        return f"{count}: " + "; ".join(f.describe(t) for t, f in self.tables.items())


def _show(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else quote(name)


def parse_subscription(specs: Sequence[str]) -> Subscription:
    """Parse table specs; ValueError naming the spec and what is wrong with it."""
    if isinstance(specs, str):
        specs = [specs]
    tables: dict[str, TableFilter] = {}
    for spec in specs:
        name, table_filter = _parse_spec(spec)
        if any(name.lower() == other.lower() for other in tables):
            raise ValueError(f"subscription {spec!r}: table {name} is listed twice")
        tables[name] = table_filter
    return Subscription(tables)


def _parse_spec(spec: str) -> tuple[str, TableFilter]:
    def fail(problem: str) -> ValueError:
        return ValueError(f"subscription {spec!r}: {problem}")

    toks = tokens(spec)
    name = toks[0].name if toks else None
    if name is None or toks[0].keyword == "WHERE":
        raise fail("it must start with a table name")
    if name.lower().startswith(_INTERNAL_PREFIXES):
        raise fail(f"{name} is an internal table and cannot be subscribed")
    i, columns = 1, None
    if i < len(toks) and toks[i].text == "(":
        columns, i = _column_list(spec, toks, i, fail)
    where = None
    if i < len(toks):
        if toks[i].keyword != "WHERE":
            raise fail(f"expected a column list or WHERE after {name}, found {toks[i].text!r}")
        where = spec[toks[i].end :].strip()
        problem = _predicate_problem(name, where) if where else "WHERE needs a predicate"
        if problem is not None:
            raise fail(problem)
    return name, TableFilter(columns, where)


def _column_list(
    spec: str, toks: list[Token], i: int, fail: Callable[[str], ValueError]
) -> tuple[tuple[str, ...], int]:
    """The names in ``( ... )`` starting at toks[i]: (names, index after the ')')."""
    names: list[str] = []
    item: list[Token] = []
    depth = 0
    for j in range(i + 1, len(toks)):
        if toks[j].text not in (",", ")") or depth:
            depth += {"(": 1, ")": -1}.get(toks[j].text, 0)
            item.append(toks[j])
            continue
        if item:
            if len(item) != 1 or item[0].name is None:
                text = spec[item[0].start : item[-1].end]
                raise fail(f"column {text!r} is not a plain column name")
            if item[0].name.lower() in (n.lower() for n in names):
                raise fail(f"column {item[0].name} is listed twice")
            names.append(item[0].name)
        elif toks[j].text == "," or names:
            raise fail("a column name is missing in the column list")
        if toks[j].text == ")":
            if not names:
                raise fail("the column list is empty")
            return tuple(names), j + 1
        item = []
    raise fail("the column list has no closing parenthesis")


def _predicate_problem(table: str, where: str) -> str | None:
    """What is wrong with a predicate, judged by SQLite as a partial index's WHERE
    clause over a table with the columns it names; None if nothing."""
    depth = 0
    for token in tokens(where):
        if token.text == ";":
            return "the predicate must be one expression (it contains ';')"
        depth += {"(": 1, ")": -1}.get(token.text, 0)
        if depth < 0:
            return "the predicate's parentheses do not match"
    if depth:
        return "the predicate's parentheses do not match"
    conn = apsw.Connection(":memory:")
    try:
        conn.execute(f"CREATE TABLE {quote(table)}(replidb_placeholder)")
        width = 1
        for _ in range(_MAX_COLUMNS):
            try:
                conn.execute(
                    f"CREATE INDEX replidb_check ON {quote(table)}(replidb_placeholder) "
                    f"WHERE (\n{where}\n)"
                )
                break
            except apsw.SQLError as exc:
                message = str(exc)
                missing = message.removeprefix("no such column: ")
                if missing == message:
                    return _predicate_error(message)
                if "." in missing:
                    return f"column {missing}: name the table's own columns, unqualified"
                conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(missing)}")
                width += 1
        else:
            return "the predicate names too many columns"
        try:  # 'now', date() and 'localtime' are only refused when evaluated
            conn.execute(f"INSERT INTO {quote(table)} VALUES ({', '.join(['0'] * width)})")
        except apsw.Error as exc:
            if "non-deterministic" in str(exc):
                return _predicate_error(str(exc))
    finally:
        conn.close()
    return None


def _predicate_error(message: str) -> str:
    if "syntax error" in message or "incomplete input" in message:
        return f"the predicate does not parse ({message})"
    message = re.sub(r" (in partial index WHERE clauses|in an index)$", "", message)
    return f"the predicate must be a deterministic expression over the row ({message})"


@contextmanager
def _names_must_resolve(conn: apsw.Connection) -> Iterator[None]:
    """Treat "x" as a column that must exist, never as the string 'x' (SQLite's
    double-quoted-string leniency in DDL would index a constant instead)."""
    before = conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, -1)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
    try:
        yield
    finally:
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, before)


def _column(name: str) -> str:
    return "rowid" if name == "rowid" else quote(name)


class PartialApplier:
    """Applies the subscribed subset of logical records to ``conn``, inside the
    caller's open transaction (with triggers disabled by the caller)."""

    def __init__(self, conn: apsw.Connection, subscription: Subscription) -> None:
        self.conn = conn
        self.subscription = subscription
        self._filters = {t.lower(): (t, f) for t, f in subscription.tables.items()}
        # Per table: the columns this replica holds (lower-cased, plus rowid). Read from
        # its own schema, valid while the schema is as it was when read.
        self._held: dict[str, frozenset[str]] = {}
        self._schema_version: Any = None

    def apply(self, record: WriteRecord) -> None:
        if any(isinstance(segment, Replay) for segment in record.segments):
            raise InternalError(
                "a statement-format record reached a partial replica: "
                "partial replication needs --stream logical"
            )
        self.replay(item for item in row_changes(record) if not isinstance(item, Replay))

    def replay(self, items: Iterable[DDL | RowChange]) -> None:
        """Apply DDL and row changes in order (a record's, or a snapshot's contents as
        the CREATEs and INSERTs that would rebuild it: storage/partial_snapshot.py)."""
        version = self.conn.execute("PRAGMA schema_version").get
        if version != self._schema_version:
            self._held.clear()
        self._schema_version = version
        try:
            for item in items:
                if isinstance(item, DDL):
                    self._apply_ddl(item.sql)
                elif item.table.lower() in self._filters:
                    self._apply_change(item)
        except BaseException:
            self._forget()  # the caller rolls back: what was read may be undone
            raise

    def subscribes(self, table: str) -> bool:
        return table.lower() in self._filters

    def _forget(self) -> None:
        self._held.clear()
        self._schema_version = None

    # ---- rows --------------------------------------------------------------------

    def _apply_change(self, change: RowChange) -> None:
        name, table_filter = self._filters[change.table.lower()]
        held = self._held_columns(name, table_filter)
        for column in change.key:
            if column.lower() not in held:
                raise InternalError(_needs_key(name, column))
        table = quote(name)
        by_key = " AND ".join(f"{_column(c)} = ?" for c in change.key)
        key = list(change.key.values())
        if change.op == "INSERT":
            after = change.after or {}
            if table_filter.where is None or self._matches(name, table_filter.where, after):
                self._insert(name, after, held)
        elif change.op == "DELETE":
            self._run(name, f"DELETE FROM {table} WHERE {by_key}", key)
            if table_filter.where is None and not self.conn.changes():
                # without a predicate this node holds every row: one missing is divergence
                raise InternalError(_diverged(name, change))
        else:
            self._apply_update(name, table_filter.where, change, held, by_key, key)

    def _apply_update(
        self,
        name: str,
        where: str | None,
        change: RowChange,
        held: frozenset[str],
        by_key: str,
        key: list[Any],
    ) -> None:
        after = change.after or {}
        listed = {c: v for c, v in after.items() if c.lower() in held}
        if where is None:  # by key; the image may hold only the changed columns
            if listed:
                self._update(name, listed, by_key, key)
                if not self.conn.changes():
                    raise InternalError(_diverged(name, change))
            return
        if not change.after_complete:  # a partial image cannot be judged
            raise InternalError(
                f"partial replication of {name} needs complete row images: "
                "run the cluster with --row-images full"
            )
        # Held <=> the old image matched (module docstring).
        was_held = self._run(name, f"SELECT 1 FROM {quote(name)} WHERE {by_key}", key)
        matches = self._matches(name, where, after)
        if was_held and matches:
            self._update(name, listed, by_key, key)
        elif was_held:
            self._run(name, f"DELETE FROM {quote(name)} WHERE {by_key}", key)
        elif matches:
            self._insert(name, after, held)

    def _insert(self, name: str, image: dict[str, Any], held: frozenset[str]) -> None:
        row = {c: v for c, v in image.items() if c.lower() in held}
        columns = ", ".join(map(_column, row))
        marks = ", ".join("?" * len(row))
        self._run(
            name, f"INSERT INTO {quote(name)}({columns}) VALUES ({marks})", list(row.values())
        )

    def _update(self, name: str, values: dict[str, Any], by_key: str, key: list[Any]) -> None:
        assignments = ", ".join(f"{_column(c)} = ?" for c in values)
        self._run(
            name, f"UPDATE {quote(name)} SET {assignments} WHERE {by_key}", [*values.values(), *key]
        )

    def _run(self, name: str, sql: str, params: list[Any]) -> Any:
        try:
            return self.conn.execute(sql, params).fetchone()
        except apsw.Error as exc:
            raise InternalError(f"partial replication of {name}: {exc}: this node has diverged")

    def _matches(self, name: str, where: str, image: dict[str, Any]) -> bool:
        """Does the predicate hold on this complete image? Asked of the filter table."""
        table = quote(_FILTER_PREFIX + name)
        columns = ", ".join(map(_column, image))
        try:
            self.conn.execute(
                f"INSERT INTO {table}({columns}) VALUES ({', '.join('?' * len(image))})",
                list(image.values()),
            )
            found = self.conn.execute(f"SELECT 1 FROM {table} WHERE (\n{where}\n)").fetchone()
            self.conn.execute(f"DELETE FROM {table}")
        except apsw.Error as exc:
            raise InternalError(
                f"partial replication of {name}: cannot evaluate its predicate: {exc}"
            )
        return found is not None

    def _held_columns(self, name: str, table_filter: TableFilter) -> frozenset[str]:
        key = name.lower()
        if key not in self._held:
            sql = "SELECT name FROM pragma_table_info(?)"
            columns = [str(row[0]).lower() for row in self.conn.execute(sql, (name,))]
            if not columns:
                raise InternalError(
                    f"partial replication of {name}: this node does not hold the table "
                    "(subscribed after the leader created it?): it needs a resync"
                )
            self._check_filter_table(name, table_filter.where)
            self._held[key] = frozenset([*columns, "rowid"])
        return self._held[key]

    def _check_filter_table(self, name: str, where: str | None) -> None:
        """Was this replica built with this predicate? (Its rows were chosen by it.)"""
        row = self.conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ? COLLATE NOCASE",
            (f"{_FILTER_PREFIX}{name}_where",),
        ).fetchone()
        if where is None:
            same = row is None
        else:
            same = row is not None and str(row[0]).endswith(f"WHERE (\n{where}\n)")
        if not same:
            raise InternalError(
                f"partial replication of {name}: this replica was built with another "
                "predicate (or none) than the subscription's: it needs a resync"
            )

    # ---- schema ------------------------------------------------------------------

    def _apply_ddl(self, sql: str) -> None:
        ddl = parse_ddl(sql)
        if ddl.kind == "rename_table":
            if {ddl.table.lower(), ddl.new_name.lower()} & self._filters.keys():
                raise InternalError(
                    f"the leader renamed table {ddl.table} to {ddl.new_name}: partial "
                    "replication does not follow a subscribed table's rename "
                    "(subscribe to the new name and resync)"
                )
            return
        if ddl.kind == "drop_index":
            if ddl.index:  # (empty: in another schema)
                self._execute(ddl.index, f"DROP INDEX IF EXISTS {quote(ddl.index)}")
            return
        if ddl.kind == "other" or ddl.table.lower() not in self._filters:
            return
        name, table_filter = self._filters[ddl.table.lower()]
        where = table_filter.where
        if ddl.kind in ("create_table_as", "create_virtual"):
            what = (
                "CREATE TABLE ... AS SELECT" if ddl.kind == "create_table_as" else "a virtual table"
            )
            raise InternalError(f"partial replication of {name} cannot follow {what}")
        if ddl.kind == "create_table":
            local = sql
            if table_filter.columns is not None:
                try:
                    local = rewrite_create(sql, frozenset(c.lower() for c in table_filter.columns))
                except ValueError as exc:
                    raise InternalError(f"partial replication of {name} {exc}")
            self._execute(name, local)
            if where is not None:  # the leader's whole definition, for judging rows
                self._execute(name, _renamed(sql, ddl.name_span, _FILTER_PREFIX + name))
                self._index_predicate(name, where)
        elif ddl.kind == "drop_table":
            self._execute(name, f"DROP TABLE IF EXISTS {quote(name)}")
            self._execute(name, f"DROP TABLE IF EXISTS {quote(_FILTER_PREFIX + name)}")
        elif ddl.kind == "create_index":
            with _names_must_resolve(self.conn):
                try:
                    self._execute(name, sql, quiet=True)
                except apsw.Error as exc:
                    if not isinstance(exc, apsw.SQLError) or "no such column" not in str(exc):
                        raise InternalError(f"partial replication of {name}: {exc}")
                    # it indexes a column this replica does not hold: skipped
        else:  # add_column, drop_column, rename_column
            if where is not None:
                index = quote(f"{_FILTER_PREFIX}{name}_where")
                self._execute(name, f"DROP INDEX IF EXISTS {index}")
                self._execute(name, _renamed(sql, ddl.name_span, _FILTER_PREFIX + name))
                self._index_predicate(name, where)
            if ddl.kind == "add_column":
                listed = table_filter.columns
                wanted = listed is None or ddl.column.lower() in (c.lower() for c in listed)
            else:
                wanted = ddl.column.lower() in self._held_columns(name, table_filter)
            if wanted:
                self._execute(name, sql)

    def _index_predicate(self, name: str, where: str) -> None:
        """(Re)create the filter table's partial index: checks that the predicate fits
        the leader's table, and keeps SQLite checking its determinism."""
        table = _FILTER_PREFIX + name
        first = self.conn.execute("SELECT name FROM pragma_table_info(?) LIMIT 1", (table,)).get
        with _names_must_resolve(self.conn):
            try:
                self._execute(
                    name,
                    f"CREATE INDEX IF NOT EXISTS {quote(table + '_where')} ON {quote(table)}"
                    f"({quote(str(first))}) WHERE (\n{where}\n)",
                    quiet=True,
                )
            except apsw.Error as exc:
                raise InternalError(
                    f"partial replication of {name}: its predicate does not fit the "
                    f"leader's table ({exc})"
                )

    def _execute(self, name: str, sql: str, quiet: bool = False) -> None:
        """Run DDL; ``quiet``: let SQLite's error through for the caller to judge."""
        try:
            self.conn.execute(sql)
        except apsw.Error as exc:
            if quiet:
                raise
            statement = " ".join(sql.split())
            raise InternalError(f"partial replication of {name}: {statement!r} failed: {exc}")
        finally:
            self._forget()


def _renamed(sql: str, span: tuple[int, int], name: str) -> str:
    return sql[: span[0]] + quote(name) + sql[span[1] :]


def _needs_key(name: str, column: str) -> str:
    return (
        f"partial replication of {name} needs its primary key column {column} in the "
        "column list (identity columns must be replicated)"
    )


def _diverged(name: str, change: RowChange) -> str:
    return (
        f"partial replication of {name}: the {change.op} of the row {change.key} found no "
        "row here: this node has diverged and needs a resync"
    )
