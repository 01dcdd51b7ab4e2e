"""A leaderless replica's SQLite database (issue #9): the user's tables, one version
history (a ``core.dvv`` clock of ``Version``s) per row key, the hints this node holds
for others, and the schema, in one file.

- Every change to a key's clock and to the row SQL readers see happens in one SQLite
  transaction (``coordinate`` a client's write here, ``receive`` another replica's
  clock). The row is *materialized* from the clock: absent when every live version is
  a tombstone, else the sibling with the largest (time, coordinator) — so SQL reads
  on any replica see one deterministic version; key reads (``present``) see them all,
  except in ``lww`` tables, where that largest one is the only answer and a write
  supersedes everything its coordinator holds.
- Hints: clocks kept for a replica that did not answer, until it is handed them.
- Tombstones stay in ``replidb_kv`` until the node purges them (node/kv_server.py says
  when that is safe); ``changed_ms`` is when the key's clock last changed here.
- SQL writes are captured (``capture_write``: run, record the row changes, roll back)
  and then coordinated as key writes; DDL runs here and is recorded in
  ``replidb_kv_schema`` so every replica can run what it lacks, in order.
"""

from __future__ import annotations

import hashlib
import logging
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
from replidb.stream.logical import DDL, Changes
from replidb.transport.kv_wire import (
    Version,
    clock_from_bytes,
    clock_to_bytes,
    decode_key,
    encode_key,
)
from replidb.transport.wire import Statement, StatementResult

__all__ = ["KV_SCHEMA", "KvStore", "RowWrite"]

log = logging.getLogger("replidb.storage")

KV_SCHEMA = """
CREATE TABLE IF NOT EXISTS replidb_kv(
    key BLOB PRIMARY KEY, clock BLOB NOT NULL, digest BLOB NOT NULL,
    tombstone INTEGER NOT NULL, changed_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replidb_kv_tombstones ON replidb_kv(tombstone, changed_ms);
CREATE TABLE IF NOT EXISTS replidb_kv_hints(
    id INTEGER PRIMARY KEY, for_node TEXT NOT NULL, key BLOB NOT NULL,
    clock BLOB NOT NULL, stored_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS replidb_kv_hints_for ON replidb_kv_hints(for_node, id);
CREATE TABLE IF NOT EXISTS replidb_kv_schema(seq INTEGER PRIMARY KEY, sql TEXT NOT NULL UNIQUE);
"""

# A captured SQL write: (table, primary key values, the whole new row or None: deleted).
RowWrite = tuple[str, list[Any], dict[str, Any] | None]


def digest(clock_bytes: bytes) -> bytes:
    return hashlib.blake2b(clock_bytes, digest_size=16).digest()


def winner(versions: Sequence[Version]) -> Version:
    """The sibling SQL readers and lww tables see: the largest (time, coordinator)."""
    return max(versions, key=lambda v: (v.ts, v.node))


class KvStore:
    def __init__(self, path: Path, node_id: str, lww: Sequence[str] = ()) -> None:
        self.path = path
        self.node_id = node_id
        self.lww = frozenset(lww)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer, self.reader = open_connections(path, KV_SCHEMA)
        self._writer_guard = install_guard(self.writer)
        self._reader_guard = install_guard(self.reader)
        self._pk_cache: dict[str, list[str]] = {}

    def close(self) -> None:
        self.reader.close()
        self.writer.close()

    # ---- keys and their clocks ---------------------------------------------------

    def pk_columns(self, table: str) -> list[str]:
        """The table's primary key columns; BadRequest if it has none or is unknown."""
        cached = self._pk_cache.get(table)
        if cached is not None:
            return cached
        rows = self.writer.execute(
            "SELECT name, pk FROM pragma_table_info(?) ORDER BY pk", (table,)
        ).fetchall()
        if not rows:
            raise BadRequest(f"no such table: {table}")
        columns = [str(name) for name, pk in rows if pk]
        if not columns:
            raise BadRequest(
                f"table {table} has no PRIMARY KEY: leaderless rows are addressed by key"
            )
        self._pk_cache[table] = columns
        return columns

    def key_of(self, table: str, row: dict[str, Any]) -> bytes:
        columns = self.pk_columns(table)
        missing = [c for c in columns if c not in row]
        if missing:
            raise BadRequest(f"the row for {table} lacks its primary key {', '.join(missing)}")
        return encode_key(table, [row[c] for c in columns])

    def clock(self, key: bytes) -> dvv.Clock | None:
        row = self.writer.execute("SELECT clock FROM replidb_kv WHERE key = ?", (key,)).fetchone()
        return clock_from_bytes(row[0]) if row else None

    def coordinate(
        self, key: bytes, context: Sequence[tuple[str, int]], row: dict[str, Any] | None,
        now_ms: int, use_current: bool = False,
    ) -> dvv.Clock:  # fmt: skip
        """A client's write, coordinated here: a new dot after ``context`` (or, with
        ``use_current`` and in lww tables, after everything this replica holds)."""
        with self._transaction() as conn:
            current = self._clock(conn, key)
            if current is not None and (use_current or decode_key(key)[0] in self.lww):
                context = dvv.join(current)
            put = leaderless.CoordPut(0, key, tuple(context), Version(now_ms, self.node_id, row))
            clock = leaderless.coordinate(current, put, self.node_id)
            self._store(conn, key, current, clock, now_ms)
            return clock

    def receive(self, key: bytes, clock: dvv.Clock, now_ms: int) -> tuple[dvv.Clock, bool]:
        """Another replica's clock for the key: merge it; (the result, whether it changed)."""
        with self._transaction() as conn:
            current = self._clock(conn, key)
            merged = leaderless.receive(current, clock)
            self._store(conn, key, current, merged, now_ms)
            return merged, merged != current

    def digests(self) -> list[tuple[bytes, bytes]]:
        """(key, digest of its clock) for every key held here: anti-entropy's input."""
        rows: list[Any] = self.writer.execute("SELECT key, digest FROM replidb_kv").fetchall()
        return [(bytes(k), bytes(d)) for k, d in rows]

    def clock_bytes(self, keys: Sequence[bytes]) -> list[bytes]:
        out = []
        for key in keys:
            row = self.writer.execute("SELECT clock FROM replidb_kv WHERE key = ?", (key,))
            found = row.fetchone()
            out.append(bytes(found[0]) if found else b"")
        return out

    def count(self) -> int:
        row = self.writer.execute("SELECT count(*) FROM replidb_kv").fetchone()
        return int(row[0]) if row else 0

    # ---- tombstones ---------------------------------------------------------------

    def old_tombstones(self, before_ms: int, limit: int = 500) -> list[bytes]:
        rows: list[Any] = self.writer.execute(
            "SELECT key FROM replidb_kv WHERE tombstone = 1 AND changed_ms < ? LIMIT ?",
            (before_ms, limit),
        ).fetchall()
        return [bytes(k) for (k,) in rows]

    def purge(self, key: bytes, clock_bytes: bytes) -> bool:
        """Forget a tombstone, if its clock is still exactly ``clock_bytes``."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM replidb_kv WHERE key = ? AND clock = ? AND tombstone = 1",
                (key, clock_bytes),
            )
            return conn.changes() > 0

    # ---- hints --------------------------------------------------------------------

    def add_hint(self, for_node: str, key: bytes, clock: dvv.Clock, now_ms: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO replidb_kv_hints(for_node, key, clock, stored_ms) VALUES(?,?,?,?)",
                (for_node, key, clock_to_bytes(clock), now_ms),
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
            key = [source[i] for i in sorted(change.pk_columns)]
            row = None if values is None else dict(zip(columns, values, strict=True))
            out.append((change.name, key, row))
        return out

    def schema(self) -> list[str]:
        rows: list[Any] = self.writer.execute(
            "SELECT sql FROM replidb_kv_schema ORDER BY seq"
        ).fetchall()
        return [str(sql) for (sql,) in rows]

    def run_ddl(self, statements: Sequence[str], strict: bool) -> list[str]:
        """Run the DDL this node lacks, in order, recording it; the statements run.
        ``strict``: a failing statement raises (a client's request); otherwise it is
        logged and recorded anyway (another node's schema: e.g. the same table created
        concurrently on two nodes), so that it is not retried forever."""
        known = set(self.schema())
        done = []
        for sql in statements:
            if sql in known:
                continue
            with self._transaction() as conn:
                try:
                    conn.execute("SAVEPOINT ddl")
                    conn.execute(sql)
                    conn.execute("RELEASE ddl")
                except apsw.Error as exc:
                    conn.execute("ROLLBACK TO ddl")
                    conn.execute("RELEASE ddl")
                    if strict:
                        raise translate(exc) from None
                    log.warning("schema from another node failed here: %s: %s", sql, exc)
                conn.execute("INSERT INTO replidb_kv_schema(sql) VALUES(?)", (sql,))
            known.add(sql)
            done.append(sql)
        self._pk_cache.clear()
        return done

    # ---- internals -------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.writer, self._writer_guard)

    @staticmethod
    def _clock(conn: apsw.Connection, key: bytes) -> dvv.Clock | None:
        row = conn.execute("SELECT clock FROM replidb_kv WHERE key = ?", (key,)).fetchone()
        return clock_from_bytes(row[0]) if row else None

    def _store(
        self, conn: apsw.Connection, key: bytes, current: dvv.Clock | None, clock: dvv.Clock,
        now_ms: int,
    ) -> None:  # fmt: skip
        if clock == current:
            return
        data = clock_to_bytes(clock)
        versions = [v for v in dvv.values(clock) if isinstance(v, Version)]
        live = [v for v in versions if v.row is not None]
        conn.execute(
            "INSERT OR REPLACE INTO replidb_kv(key, clock, digest, tombstone, changed_ms) "
            "VALUES(?, ?, ?, ?, ?)",
            (key, data, digest(data), int(not live), now_ms),
        )
        table, pk = decode_key(key)
        self._materialize(conn, table, pk, winner(live).row if live else None)

    def _materialize(
        self, conn: apsw.Connection, table: str, pk: list[Any], row: dict[str, Any] | None
    ) -> None:
        columns = self.pk_columns(table)
        if len(columns) != len(pk):
            raise BadRequest(f"{table}'s key has {len(columns)} column(s), got {len(pk)} value(s)")
        name = quote_name(table)
        where = " AND ".join(f"{quote_name(c)} IS ?" for c in columns)
        if row is None:
            conn.execute(f"DELETE FROM {name} WHERE {where}", pk)
            return
        if [row.get(c) for c in columns] != pk:
            raise BadRequest(f"a row for {table} whose key is not {pk}")
        names = ", ".join(quote_name(c) for c in row)
        marks = ", ".join("?" for _ in row)
        conn.execute(f"INSERT OR REPLACE INTO {name}({names}) VALUES({marks})", list(row.values()))


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
