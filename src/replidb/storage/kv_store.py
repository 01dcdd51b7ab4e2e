"""A leaderless replica's SQLite database (issue #9): the user's tables, one version
history (a ``core.dvv`` clock of ``Version``s) per row key, the hints this node holds
for others, the keys it purged lately, and the schema, in one file.

- Every change to a key's clock and to the row SQL readers see happens in one SQLite
  transaction (``coordinate`` a client's write here, ``receive`` another replica's
  clock). The row is *materialized* from the clock: absent when every live version is
  a tombstone, else the latest sibling (``kv_wire.latest``) — so SQL reads on any
  replica see one deterministic version; key reads (``present_rows``) see them all,
  except in ``lww`` tables, where the latest version is the only answer and a write
  supersedes everything its coordinator holds.
- Dots never repeat. This replica coordinates as an *actor* named after its node id
  and an incarnation that changes on every start (a replica restored from an older
  copy cannot reuse a dot it handed out before) and after every purge (purging a key
  forgets its counters; a context read before the purge would cover them). The
  purged clock is kept for a grace period: a late copy of anything it superseded is
  acknowledged and dropped, not stored (it would bring the row back).
- Hints: clocks kept for a replica that did not answer, until it is handed them.
- SQL writes are captured (``capture_write``: run, record the row changes, roll back)
  and then coordinated as key writes; DDL goes through ``storage.kv_schema``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw

from replidb.core import dvv, leaderless
from replidb.errors import BadRequest, Error, SQLError
from replidb.storage.executor import (
    capture_changes,
    install_guard,
    open_connections,
    quote_name,
    run_read,
    translate,
)
from replidb.storage.kv_schema import KvSchema
from replidb.stream.logical import DDL, Changes
from replidb.transport.kv_wire import (
    Version,
    clock_from_bytes,
    clock_to_bytes,
    decode_key,
    encode_key,
    latest,
    normalize_key,
)
from replidb.transport.wire import Statement, StatementResult

__all__ = ["KV_SCHEMA", "KvStore", "RowWrite"]

KV_SCHEMA = """
CREATE TABLE IF NOT EXISTS replidb_kv(
    key BLOB PRIMARY KEY, tbl TEXT NOT NULL, clock BLOB NOT NULL, digest BLOB NOT NULL,
    tombstone INTEGER NOT NULL, changed_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replidb_kv_tombstones ON replidb_kv(tombstone, changed_ms);
CREATE TABLE IF NOT EXISTS replidb_kv_hints(
    id INTEGER PRIMARY KEY, for_node TEXT NOT NULL, key BLOB NOT NULL, tbl TEXT NOT NULL,
    clock BLOB NOT NULL, stored_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS replidb_kv_hints_for ON replidb_kv_hints(for_node, id);
CREATE TABLE IF NOT EXISTS replidb_kv_purged(
    key BLOB PRIMARY KEY, clock BLOB NOT NULL, purged_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replidb_kv_schema(
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, sql TEXT NOT NULL, failed TEXT);
CREATE TABLE IF NOT EXISTS replidb_kv_meta(key TEXT PRIMARY KEY, value);
"""

# A captured SQL write: (table, primary key values, the whole new row or None: deleted).
RowWrite = tuple[str, list[Any], dict[str, Any] | None]


def digest(clock_bytes: bytes) -> bytes:
    return hashlib.blake2b(clock_bytes, digest_size=16).digest()


class KvStore:
    def __init__(self, path: Path, node_id: str, now_ms: int, lww: Sequence[str] = ()) -> None:
        self.path = path
        self.node_id = node_id
        self.lww = frozenset(lww)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer, self.reader = open_connections(path, KV_SCHEMA)
        self._writer_guard = install_guard(self.writer)
        self._reader_guard = install_guard(self.reader)
        self.tables = KvSchema(self.writer)
        with self._transaction():
            self._new_actor(now_ms)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()

    # ---- keys and their clocks ---------------------------------------------------

    def key_of(self, table: str, row: dict[str, Any]) -> bytes:
        columns, _ = self.tables.key_columns(table)
        missing = [c for c in columns if c not in row]
        if missing:
            raise BadRequest(f"the row for {table} lacks its primary key {', '.join(missing)}")
        return self.key(table, [row[c] for c in columns])

    def key(self, table: str, values: list[Any]) -> bytes:
        columns, affinities = self.tables.key_columns(table)
        if len(values) != len(columns):
            raise BadRequest(
                f"{table}'s primary key is ({', '.join(columns)}): {len(columns)} value(s), "
                f"got {len(values)}"
            )
        return encode_key(table, normalize_key(values, affinities))

    def check_key(self, key: bytes) -> None:
        """BadRequest unless ``key`` names a known table and its normalized key values
        (what ``key`` gives): one row, one key, on every replica."""
        table, values = decode_key(key)
        if self.key(table, values) != key:
            raise BadRequest(f"{table}: key {values} is not as the table stores it")

    def clock(self, key: bytes) -> dvv.Clock | None:
        return self._clock(self.writer, key)

    def coordinate(
        self, key: bytes, context: Sequence[tuple[str, int]], row: dict[str, Any] | None,
        now_ms: int, use_current: bool = False, wid: str = "",
    ) -> dvv.Clock:  # fmt: skip
        """A client's write, coordinated here: a new dot after ``context`` (or, with
        ``use_current`` and in lww tables, after everything this replica holds)."""
        with self._transaction() as conn:
            current = self._clock(conn, key)
            if current is not None and (use_current or decode_key(key)[0] in self.lww):
                context = dvv.join(current)
            version = Version(now_ms, self.node_id, self._row_for(key, row), wid)
            put = leaderless.CoordPut(0, key, tuple(context), version)
            clock = leaderless.coordinate(current, put, self.actor)
            self._store(conn, key, current, clock, now_ms)
            return clock

    def receive(self, key: bytes, clock: dvv.Clock, now_ms: int) -> tuple[dvv.Clock, bool]:
        """Another replica's clock for the key: merge it; (the result, whether it changed).
        What a deletion purged here lately superseded is dropped from it."""
        with self._transaction() as conn:
            current = self._clock(conn, key)
            purged = self._purged(conn, key)
            if purged is not None:
                if current is None and leaderless.superseded_by_purge(clock, purged):
                    return purged, False
                # Whatever the purged tombstone superseded stays superseded, also when
                # it comes bundled with a write made since (its tombstone comes back
                # with it, as a value no read shows).
                clock = dvv.sync(clock, purged)
            merged = leaderless.receive(current, clock)
            self._store(conn, key, current, merged, now_ms)
            return merged, merged != current

    def digests(self) -> list[tuple[bytes, bytes]]:
        """(key, digest of its clock) for every key held here: anti-entropy's input."""
        rows: list[Any] = self.writer.execute("SELECT key, digest FROM replidb_kv").fetchall()
        return [(bytes(k), bytes(d)) for k, d in rows]

    def clock_bytes(self, keys: Sequence[bytes], table: str = "replidb_kv") -> list[bytes]:
        """Each key's stored clock (b"" if none), from replidb_kv or replidb_kv_purged."""
        out = []
        for key in keys:
            found = self.writer.execute(f"SELECT clock FROM {table} WHERE key = ?", (key,))
            row = found.fetchone()
            out.append(bytes(row[0]) if row else b"")
        return out

    def count(self) -> int:
        row = self.writer.execute("SELECT count(*) FROM replidb_kv").fetchone()
        return int(row[0]) if row else 0

    # ---- tombstones ---------------------------------------------------------------

    def old_tombstones(self, before_ms: int, limit: int = 500) -> list[tuple[bytes, int]]:
        """(key, when it last changed) of tombstone-only keys unchanged since before_ms."""
        rows: list[Any] = self.writer.execute(
            "SELECT key, changed_ms FROM replidb_kv WHERE tombstone = 1 AND changed_ms < ? LIMIT ?",
            (before_ms, limit),
        ).fetchall()
        return [(bytes(k), int(c)) for k, c in rows]

    def purge(self, items: Sequence[tuple[bytes, bytes]], now_ms: int) -> int:
        """Forget tombstones (key, clock bytes) whose clock is still exactly that; how
        many. Their clocks are kept a grace period (``receive``), and this replica
        coordinates as a new actor from now on: the counters it forgot are never
        handed out again (a context read before the purge would cover them)."""
        purged = 0
        with self._transaction() as conn:
            for key, clock_bytes in items:
                conn.execute(
                    "DELETE FROM replidb_kv WHERE key = ? AND clock = ? AND tombstone = 1",
                    (key, clock_bytes),
                )
                if conn.changes():
                    purged += 1
                    conn.execute(
                        "INSERT OR REPLACE INTO replidb_kv_purged(key, clock, purged_ms) "
                        "VALUES(?, ?, ?)",
                        (key, clock_bytes, now_ms),
                    )
            if purged:
                self._new_actor(now_ms)
        return purged

    def forget_purged(self, before_ms: int) -> int:
        """Purged keys' clocks kept since before ``before_ms`` are dropped."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM replidb_kv_purged WHERE purged_ms < ?", (before_ms,))
            return conn.changes()

    # ---- hints --------------------------------------------------------------------

    def add_hint(self, for_node: str, key: bytes, clock: dvv.Clock, now_ms: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO replidb_kv_hints(for_node, key, tbl, clock, stored_ms) "
                "VALUES(?, ?, ?, ?, ?)",
                (for_node, key, decode_key(key)[0], clock_to_bytes(clock), now_ms),
            )

    def hints_for(self, node: str, limit: int) -> list[tuple[int, bytes, bytes]]:
        rows: list[Any] = self.writer.execute(
            "SELECT id, key, clock FROM replidb_kv_hints WHERE for_node = ? ORDER BY id LIMIT ?",
            (node, limit),
        ).fetchall()
        return [(int(i), bytes(k), bytes(c)) for i, k, c in rows]

    def drop_hint(self, hint_id: int) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM replidb_kv_hints WHERE id = ?", (hint_id,))

    def expire_hints(self, before_ms: int) -> int:
        with self._transaction() as conn:
            conn.execute("DELETE FROM replidb_kv_hints WHERE stored_ms < ?", (before_ms,))
            return conn.changes()

    def hint_counts(self) -> dict[str, int]:
        rows: list[Any] = self.writer.execute(
            "SELECT for_node, count(*) FROM replidb_kv_hints GROUP BY for_node"
        ).fetchall()
        return {str(n): int(c) for n, c in rows}

    def hinted(self, key: bytes) -> bool:
        row = self.writer.execute("SELECT 1 FROM replidb_kv_hints WHERE key = ? LIMIT 1", (key,))
        return row.fetchone() is not None

    # ---- SQL ------------------------------------------------------------------------

    def execute_read(self, statements: Sequence[Statement]) -> list[StatementResult]:
        return run_read(self.reader, self._reader_guard, statements)

    def capture_write(
        self, statements: Sequence[Statement]
    ) -> tuple[list[StatementResult], list[RowWrite], list[str]]:
        """Run a write here and roll it back: its results, the rows it changed (to
        coordinate as key writes) and its DDL (to run with ``run_ddl``)."""
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            results, segments = capture_changes(
                conn, statements, self._writer_guard, None, full_images=True
            )
            ddl: list[str] = []
            rows: list[RowWrite] = []
            for segment in segments:
                if isinstance(segment, DDL):
                    ddl.append(segment.sql)
                elif isinstance(segment, Changes):
                    rows.extend(self._row_writes(segment))
            if ddl and rows:
                raise BadRequest(
                    "leaderless: send schema changes (DDL) and row changes in separate requests"
                )
            return results, rows, ddl
        except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
            raise translate(exc, self._writer_guard) from None
        finally:
            conn.execute("ROLLBACK")

    def _row_writes(self, segment: Changes) -> list[RowWrite]:
        out: list[RowWrite] = []
        images = iter(segment.update_images)
        for change in apsw.Changeset.iter(segment.changeset):
            columns = segment.columns[change.name]
            values: list[Any] | None = None
            if change.op == "INSERT":
                values = list(change.new or ())
            elif change.op == "UPDATE":
                values = list(next(images))
            source = (change.new if change.op == "INSERT" else change.old) or ()
            names, _ = self.tables.key_columns(change.name)  # (in key order)
            key = [source[columns.index(name)] for name in names]
            row = None if values is None else dict(zip(columns, values, strict=True))
            out.append((change.name, key, row))
        return out

    def schema(self) -> list[str]:
        return self.tables.statements()

    def run_ddl(self, statements: Sequence[str], strict: bool) -> list[str]:
        with self._transaction():
            done = self.tables.run(statements, strict, self.actor)
            if done:  # (a dropped table's counters are forgotten: never hand them out again)
                self._new_actor(int(self._meta("clock_ms") or 0))
            return done

    # ---- internals -------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.writer, self._writer_guard)

    @staticmethod
    def _clock(conn: apsw.Connection, key: bytes) -> dvv.Clock | None:
        row = conn.execute("SELECT clock FROM replidb_kv WHERE key = ?", (key,)).fetchone()
        return clock_from_bytes(row[0]) if row else None

    @staticmethod
    def _purged(conn: apsw.Connection, key: bytes) -> dvv.Clock | None:
        row = conn.execute("SELECT clock FROM replidb_kv_purged WHERE key = ?", (key,))
        found = row.fetchone()
        return clock_from_bytes(found[0]) if found else None

    def _row_for(self, key: bytes, row: dict[str, Any] | None) -> dict[str, Any] | None:
        """The row as stored: its key columns as the key has them (normalized), every
        column a known one holding a plain value; BadRequest names what is wrong."""
        if row is None:
            return None
        table, pk = decode_key(key)
        known = set(self.tables.columns(table))
        unknown = [c for c in row if c not in known]
        if unknown:
            raise BadRequest(f"table {table} has no column {unknown[0]}")
        for column, value in row.items():
            if value is not None and not isinstance(value, int | float | str | bytes):
                raise BadRequest(
                    f"column {column}: {type(value).__name__} is not a value SQLite stores"
                )
        names, _ = self.tables.key_columns(table)
        return {**row, **dict(zip(names, pk, strict=True))}

    def _store(
        self, conn: apsw.Connection, key: bytes, current: dvv.Clock | None, clock: dvv.Clock,
        now_ms: int,
    ) -> None:  # fmt: skip
        if clock == current:
            return
        data = clock_to_bytes(clock)
        versions = [v for v in dvv.values(clock) if isinstance(v, Version)]
        table, pk = decode_key(key)
        shown = latest(versions) if versions and table in self.lww else None
        if shown is None:
            live = [v for v in versions if v.row is not None]
            shown = latest(live) if live else None
        conn.execute(
            "INSERT OR REPLACE INTO replidb_kv(key, tbl, clock, digest, tombstone, changed_ms) "
            "VALUES(?, ?, ?, ?, ?, ?)",
            (key, table, data, digest(data), int(all(v.row is None for v in versions)), now_ms),
        )
        self._materialize(conn, table, pk, shown.row if shown is not None else None)

    def _materialize(
        self, conn: apsw.Connection, table: str, pk: list[Any], row: dict[str, Any] | None
    ) -> None:
        columns, _ = self.tables.key_columns(table)
        if len(columns) != len(pk):
            raise BadRequest(f"{table}'s key has {len(columns)} column(s), got {len(pk)} value(s)")
        name = quote_name(table)
        where = " AND ".join(f"{quote_name(c)} IS ?" for c in columns)
        conn.execute(f"DELETE FROM {name} WHERE {where}", pk)
        if row is None:
            return
        # Columns dropped since the version was written are left out: every replica
        # materializes it alike, and it still converges.
        known = set(self.tables.columns(table))
        row = {c: v for c, v in row.items() if c in known}
        names = ", ".join(quote_name(c) for c in row)
        marks = ", ".join("?" for _ in row)
        conn.execute(f"INSERT INTO {name}({names}) VALUES({marks})", list(row.values()))

    def _new_actor(self, now_ms: int) -> None:
        """A new incarnation, above any this file has seen and above the wall clock in
        ms (a file restored from an older copy starts above what it handed out since:
        incarnations change far less often than every millisecond)."""
        incarnation = max(int(self._meta("incarnation") or 0) + 1, now_ms)
        self._set_meta("incarnation", incarnation)
        self._set_meta("clock_ms", now_ms)
        self.actor = f"{self.node_id}.{incarnation:x}"

    def _meta(self, key: str) -> Any:
        row = self.writer.execute("SELECT value FROM replidb_kv_meta WHERE key = ?", (key,))
        found = row.fetchone()
        return found[0] if found else None

    def _set_meta(self, key: str, value: Any) -> None:
        self.writer.execute(
            "INSERT OR REPLACE INTO replidb_kv_meta(key, value) VALUES(?, ?)", (key, value)
        )


class _Transaction:
    """BEGIN IMMEDIATE .. COMMIT on the writer, triggers off (a row here is a copy of
    what its coordinator ran, triggers included), apsw errors translated."""

    def __init__(self, conn: apsw.Connection, guard: Any) -> None:
        self.conn = conn
        self.guard = guard

    def __enter__(self) -> apsw.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        return self.conn

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
        finally:
            self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        if isinstance(exc, apsw.Error):
            raise translate(exc, self.guard) from None
        if isinstance(exc, (TypeError, ValueError, OverflowError)) and not isinstance(exc, Error):
            raise SQLError(f"cannot store the row: {exc}") from None
