"""A multi-leader node's SQLite database (issue #8): the user's tables, the mesh log,
per-row versions and the conflicts, in one file, so one SQLite transaction covers a
change's rows, its log entry and the applied vector.

- Local write (``execute_local``): run the client's statements, capture their row
  changes (whole after-images), give every changed row the transaction's timestamp
  as its version — remembering the version it overwrote, the change's *base* — and
  log the change, all in one transaction.
- Remote change (``apply_remote``): for each row, ``core.mesh.decide`` says whether
  it wins (the larger timestamp) and whether it conflicts (the row here is not the
  version its origin overwrote). The table's resolution then acts: ``lww`` keeps the
  winner; ``record`` keeps the winner and writes both versions to
  ``replidb_conflicts``; ``custom:NAME`` calls the resolver registered under NAME
  (replidb.multileader) with both versions, older first, and keeps what it returns.
  Deleted rows keep their version (a tombstone), so a late update cannot resurrect
  a row that was deleted after it, and a delete conflicts like any write.
- Ids: an INSERT that leaves an INTEGER PRIMARY KEY to SQLite gets its ids from this
  node's stripe instead (ids ≡ offset mod stride, ``replidb_next_id``): leaders never
  hand out the same id (storage/mesh_ids.py).

The mesh log numbers changes in the order this node applied them (``pos``), which is
the order it forwards them in (core/mesh.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import msgspec

from replidb.core.hlc import HLC
from replidb.core.mesh import Change, decide
from replidb.errors import BadRequest
from replidb.storage import mesh_ids, sessions
from replidb.storage.executor import (
    capture_changes,
    install_guard,
    open_connections,
    quote_name,
    run_read,
    translate,
)
from replidb.stream.logical import DDL, Changes
from replidb.transport.wire import Statement, StatementResult

__all__ = ["MESH_SCHEMA", "MeshStore", "Resolver", "check_resolution"]

log = logging.getLogger("replidb.storage")

MESH_SCHEMA = """
CREATE TABLE IF NOT EXISTS replidb_mesh_log(
    pos INTEGER PRIMARY KEY, origin TEXT NOT NULL, seq INTEGER NOT NULL,
    wall INTEGER NOT NULL, logical INTEGER NOT NULL, deps BLOB NOT NULL,
    data BLOB NOT NULL, UNIQUE(origin, seq));
CREATE TABLE IF NOT EXISTS replidb_mesh_versions(
    tbl TEXT NOT NULL, pk BLOB NOT NULL, wall INTEGER NOT NULL, logical INTEGER NOT NULL,
    origin TEXT NOT NULL, deleted INTEGER NOT NULL, PRIMARY KEY(tbl, pk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replidb_mesh_meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS replidb_conflicts(
    id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, pk TEXT NOT NULL,
    local_version TEXT, local_row TEXT, remote_version TEXT NOT NULL, remote_row TEXT,
    kept TEXT NOT NULL, resolution TEXT NOT NULL, detected_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replidb_client_sessions(
    client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, result BLOB NOT NULL,
    idx INTEGER NOT NULL);
"""

# (a resolver: table, older version, newer version -> the row to keep, None: deleted)
Resolver = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], dict[str, Any] | None]

# One row change in a change's data: DDL text, or a row's new state with its base.
_Stamp = tuple[int, int, str]


class _RowOp(msgspec.Struct, array_like=True, frozen=True):
    table: str
    columns: list[str]
    key: list[Any]  # primary key values (columns flagged in ``pk``)
    pk: list[int]  # indexes of the key columns
    values: list[Any] | None  # the whole new row; None: deleted
    base: _Stamp | None  # the version this write overwrote at its origin


class _Record(msgspec.Struct, array_like=True, frozen=True):
    """A change's data: its DDL (run first), then its rows."""

    ddl: list[str]
    rows: list[_RowOp]


_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(_Record)
_deps_decoder = msgspec.msgpack.Decoder(dict[str, int])


def _hlc(stamp: _Stamp | None) -> HLC | None:
    return HLC(*stamp) if stamp is not None else None


def _stamp(hlc: HLC) -> _Stamp:
    return (hlc.wall_ms, hlc.logical, hlc.origin)


def check_resolution(policy: str, resolvers: dict[str, Resolver]) -> None:
    """ValueError unless ``policy`` is lww, record or custom:NAME of a known resolver."""
    if policy in ("lww", "record"):
        return
    if not policy.startswith("custom:") or policy.removeprefix("custom:") not in resolvers:
        known = ", ".join(sorted(resolvers)) or "none registered"
        raise ValueError(
            f"unknown conflict resolution {policy!r}: choose lww, record or custom:NAME "
            f"with NAME a resolver registered by a --resolvers module ({known})"
        )


class MeshStore:
    def __init__(
        self,
        path: Path,
        node_id: str,
        id_offset: int,
        id_stride: int,
        resolution: dict[str, str] | None = None,
        default_resolution: str = "lww",
        resolvers: dict[str, Resolver] | None = None,
    ) -> None:
        self.path = path
        self.node_id = node_id
        self.resolution = dict(resolution or {})
        self.default_resolution = default_resolution
        self.resolvers = resolvers or {}
        for policy in [default_resolution, *self.resolution.values()]:
            check_resolution(policy, self.resolvers)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer, self.reader = open_connections(path, MESH_SCHEMA)
        self._writer_guard = install_guard(self.writer)
        self._reader_guard = install_guard(self.reader)
        self.ids = mesh_ids.IdStripes(self.writer, id_offset, id_stride)
        self.conflicts = int(self._meta("conflicts") or 0)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()

    # ---- what the core reads -----------------------------------------------------

    def applied(self) -> dict[str, int]:
        rows: list[Any] = self.writer.execute(
            "SELECT origin, max(seq) FROM replidb_mesh_log GROUP BY origin"
        ).fetchall()
        return {str(origin): int(seq) for origin, seq in rows}

    def last_hlc(self) -> HLC | None:
        row = self.writer.execute(
            "SELECT wall, logical FROM replidb_mesh_log ORDER BY wall DESC, logical DESC LIMIT 1"
        ).fetchone()
        return HLC(int(row[0]), int(row[1]), self.node_id) if row else None

    def scan(self, after: int, limit: int) -> list[tuple[int, Change]]:
        rows: list[Any] = self.writer.execute(
            "SELECT pos, origin, seq, wall, logical, deps, data FROM replidb_mesh_log "
            "WHERE pos > ? ORDER BY pos LIMIT ?",
            (after, limit),
        ).fetchall()
        return [
            (int(pos), Change(str(o), int(s), int(w), int(lg), _deps_decoder.decode(deps), d))
            for pos, o, s, w, lg, deps, d in rows
        ]

    def position(self, origin: str, seq: int) -> int:
        row = self.writer.execute(
            "SELECT pos FROM replidb_mesh_log WHERE origin = ? AND seq = ?", (origin, seq)
        ).fetchone()
        return int(row[0]) if row else 0

    # ---- reads and local writes --------------------------------------------------

    def execute_read(self, statements: Sequence[Statement]) -> list[StatementResult]:
        return run_read(self.reader, self._reader_guard, statements)

    def execute_local(
        self,
        statements: Sequence[Statement],
        seq: int,
        stamp: HLC,
        deps: dict[str, int],
        client_id: str = "",
        client_seq: int = 0,
    ) -> tuple[list[StatementResult], Change | None]:
        """Run a client transaction here; its change to send (None if it changed
        nothing, or is a retry of one already done)."""
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            if client_id:
                previous = sessions.previous_result(conn, client_id, client_seq)
                if previous is not None:
                    return previous[0], None
            rewritten = [self.ids.rewrite(s) for s in statements]
            results, segments = capture_changes(
                conn, rewritten, self._writer_guard, None, full_images=True
            )
            record = self._record(conn, segments, stamp)
            if not record.ddl and not record.rows:
                return results, None
            data = _encoder.encode(record)
            change = Change(self.node_id, seq, stamp.wall_ms, stamp.logical, deps, data)
            self._log(change)
            if client_id:  # (outside the capture: retries are recognised here only)
                sessions.remember_result(conn, client_id, client_seq, results, seq)
            conn.execute("COMMIT")
            committed = True
            return results, change
        except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
            raise translate(exc, self._writer_guard) from None
        finally:
            if not committed and conn.in_transaction:
                conn.execute("ROLLBACK")

    def _record(self, conn: apsw.Connection, segments: list[Any], stamp: HLC) -> _Record:
        ddl: list[str] = []
        rows: list[_RowOp] = []
        for segment in segments:
            if isinstance(segment, DDL):
                if rows:  # (a change's record runs its DDL first, on every node)
                    raise BadRequest(
                        "multi-leader: run schema changes (DDL) before the row changes of a "
                        "transaction, or in their own request"
                    )
                ddl.append(segment.sql)
            elif isinstance(segment, Changes):
                rows.extend(self._row_ops(conn, segment, stamp))
        return _Record(ddl, rows)

    def _row_ops(self, conn: apsw.Connection, segment: Changes, stamp: HLC) -> list[_RowOp]:
        ops = []
        images = iter(segment.update_images)
        for change in apsw.Changeset.iter(segment.changeset):
            table = change.name
            columns = segment.columns[table]
            pk = sorted(change.pk_columns)
            values: list[Any] | None = None
            if change.op == "INSERT":
                values = list(change.new or ())
            elif change.op == "UPDATE":
                values = list(next(images))
            source = (change.new if change.op == "INSERT" else change.old) or ()
            key = [source[i] for i in pk]
            base = self._version(conn, table, key)
            self._set_version(conn, table, key, stamp, values is None)
            ops.append(_RowOp(table, columns, key, pk, values, _stamp(base) if base else None))
        return ops

    # ---- remote changes -----------------------------------------------------------

    def apply_remote(self, change: Change) -> int:
        """Apply another node's change, resolving conflicts; the conflicts found."""
        conn = self.writer
        record = _record_decoder.decode(change.data)
        found = 0
        conn.execute("BEGIN IMMEDIATE")
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)  # (the origin already ran them)
        try:
            for sql in record.ddl:
                try:
                    conn.execute("SAVEPOINT ddl")
                    conn.execute(sql)
                    conn.execute("RELEASE ddl")
                except apsw.Error as exc:  # e.g. the same table created concurrently
                    conn.execute("ROLLBACK TO ddl")
                    conn.execute("RELEASE ddl")
                    found += 1
                    self._note_conflict(
                        "(schema)", [sql], None, None, change.hlc, None, "local", f"ddl: {exc}"
                    )
            for op in record.rows:
                found += self._apply_row(conn, op, change.hlc)
            self._log(change)
            if found:
                self.conflicts += found
                self._set_meta("conflicts", self.conflicts)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        return found

    def _apply_row(self, conn: apsw.Connection, op: _RowOp, incoming: HLC) -> int:
        current = self._version(conn, op.table, op.key)
        wins, conflict = decide(current, _hlc(op.base), incoming)
        policy = self.resolution.get(op.table, self.default_resolution)
        if conflict and policy.startswith("custom:"):
            # Both versions, older first: every node calls it with the same pair.
            versions = sorted(
                [(current or HLC(0, 0, ""), self._row(conn, op)), (incoming, op.values)],
                key=lambda version: version[0],
            )
            older, newer = (self._as_dict(op, values) for _, values in versions)
            merged = self.resolvers[policy.removeprefix("custom:")](op.table, older, newer)
            values = None if merged is None else [merged.get(c) for c in op.columns]
            self._write_row(conn, op, values)
            top = max(incoming, current) if current else incoming
            self._set_version(conn, op.table, op.key, top, values is None)
            return 1
        local_row = self._row(conn, op) if conflict and policy == "record" else None
        if wins:
            self._write_row(conn, op, op.values)
            self._set_version(conn, op.table, op.key, incoming, op.values is None)
        if conflict and policy == "record":
            kept = "remote" if wins else "local"
            self._note_conflict(op.table, op.key, current, local_row, incoming, op.values,
                                kept, "record (last writer wins)")  # fmt: skip
        return int(conflict)

    def _row(self, conn: apsw.Connection, op: _RowOp) -> list[Any] | None:
        where = " AND ".join(f"{quote_name(op.columns[i])} IS ?" for i in op.pk)
        names = ", ".join(quote_name(c) for c in op.columns)
        row = conn.execute(
            f"SELECT {names} FROM {quote_name(op.table)} WHERE {where}", op.key
        ).fetchone()
        return list(row) if row is not None else None

    @staticmethod
    def _as_dict(op: _RowOp, values: list[Any] | None) -> dict[str, Any] | None:
        return None if values is None else dict(zip(op.columns, values, strict=True))

    def _write_row(self, conn: apsw.Connection, op: _RowOp, values: list[Any] | None) -> None:
        table = quote_name(op.table)
        if values is None:
            where = " AND ".join(f"{quote_name(op.columns[i])} IS ?" for i in op.pk)
            conn.execute(f"DELETE FROM {table} WHERE {where}", op.key)
            return
        names = ", ".join(quote_name(c) for c in op.columns)
        marks = ", ".join("?" for _ in op.columns)
        conn.execute(f"INSERT OR REPLACE INTO {table}({names}) VALUES({marks})", values)

    def _note_conflict(
        self,
        table: str,
        key: list[Any],
        local: HLC | None,
        local_row: list[Any] | None,
        remote: HLC,
        remote_row: list[Any] | None,
        kept: str,
        resolution: str,
    ) -> None:
        """One row of replidb_conflicts: both versions, and which one was kept."""
        self.writer.execute(
            "INSERT INTO replidb_conflicts(tbl, pk, local_version, local_row, "
            "remote_version, remote_row, kept, resolution, detected_by) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                table,
                json.dumps(key, default=repr),
                str(local) if local else None,
                json.dumps(local_row, default=repr) if local_row is not None else None,
                str(remote),
                json.dumps(remote_row, default=repr) if remote_row is not None else None,
                kept,
                resolution,
                self.node_id,
            ),
        )

    # ---- versions, log, meta -----------------------------------------------------

    def _version(self, conn: apsw.Connection, table: str, key: list[Any]) -> HLC | None:
        row = conn.execute(
            "SELECT wall, logical, origin FROM replidb_mesh_versions WHERE tbl = ? AND pk = ?",
            (table, _encoder.encode(key)),
        ).fetchone()
        return HLC(int(row[0]), int(row[1]), str(row[2])) if row else None

    def _set_version(
        self, conn: apsw.Connection, table: str, key: list[Any], stamp: HLC, deleted: bool
    ) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO replidb_mesh_versions(tbl, pk, wall, logical, origin, "
            "deleted) VALUES(?, ?, ?, ?, ?, ?)",
            (table, _encoder.encode(key), stamp.wall_ms, stamp.logical, stamp.origin, deleted),
        )

    def _log(self, change: Change) -> None:
        self.writer.execute(
            "INSERT INTO replidb_mesh_log(origin, seq, wall, logical, deps, data) "
            "VALUES(?, ?, ?, ?, ?, ?)",
            (change.origin, change.seq, change.wall_ms, change.logical,
             _encoder.encode(change.deps), change.data),
        )  # fmt: skip

    def _meta(self, key: str) -> Any:
        row = self.writer.execute(
            "SELECT value FROM replidb_mesh_meta WHERE key = ?", (key,)
        ).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        self.writer.execute(
            "INSERT OR REPLACE INTO replidb_mesh_meta(key, value) VALUES(?, ?)", (key, value)
        )
