"""Running a client's statements against SQLite, and turning what they changed into a
logical record (DDL segments + session changesets).

This is an adapter: apsw exceptions are translated here into replidb errors, with the
statement's own one-line message (``no such table: x``).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw

from replidb.errors import BadRequest, Conflict, ConstraintError, Error, InternalError, SQLError
from replidb.storage import ddl_undo
from replidb.storage.rowid_guard import add_autoincrement, split_sql
from replidb.stream.changeset import iter_changeset
from replidb.stream.logical import DDL, Changes, Segment
from replidb.transport.wire import Statement, StatementResult, results_digest

__all__ = [
    "INTERNAL_TABLES",
    "REPLICATED_INTERNAL_TABLES",
    "NeedsWrite",
    "capture_changes",
    "changes_data",
    "install_guard",
    "open_connections",
    "quote_name",
    "run_read",
    "run_statements",
    "translate",
]

# Tables replidb keeps next to the user's data. Only client sessions replicate (so a
# retried write is recognised on whichever node leads next); the rest are per node.
INTERNAL_TABLES = frozenset(
    {
        "replidb_meta",
        "replidb_log",
        "replidb_discarded",
        "replidb_undo",
        # multi-leader (storage/mesh_store.py): node-local, never captured
        "replidb_mesh_log",
        "replidb_mesh_versions",
        "replidb_mesh_meta",
        "replidb_conflicts",
        # leaderless (storage/kv_store.py)
        "replidb_kv",
        "replidb_kv_hints",
        "replidb_kv_schema",
        "replidb_kv_purged",
        "replidb_kv_meta",
    }
)
REPLICATED_INTERNAL_TABLES = frozenset({"replidb_client_sessions", "replidb_rowid_leases"})

_DDL_RE = re.compile(
    r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(CREATE|DROP|ALTER|REINDEX|ANALYZE)\b",
    re.IGNORECASE | re.DOTALL,
)
_TEMP_RE = re.compile(r"^\s*CREATE\s+(TEMP|TEMPORARY)\b", re.IGNORECASE)

# Pragmas that only read: allowed with an argument (e.g. ``table_info(t)``).
_READ_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "function_list",
        "pragma_list",
        "collation_list",
        "database_list",
        "compile_options",
    }
)


class NeedsWrite(Exception):
    """A statement tried to write on a read-only path: route the request to the leader."""


class _Guard:
    """An SQLite authorizer: refuses what would break replication, and remembers why."""

    def __init__(self) -> None:
        self.user = False  # only user statements are policed
        self.reason: str | None = None

    def __call__(self, op: int, a1: str | None, a2: str | None, db: str | None, _t: Any) -> int:
        if not self.user:
            return apsw.SQLITE_OK
        reason = None
        if op in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
            reason = (
                "transaction control (BEGIN/COMMIT/ROLLBACK/SAVEPOINT) is done by replidb: "
                "send the statements as one request"
            )
        elif op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
            reason = "ATTACH/DETACH is not replicated and is not allowed"
        elif (
            op == apsw.SQLITE_PRAGMA and a2 is not None and (a1 or "").lower() not in _READ_PRAGMAS
        ):
            reason = f"PRAGMA {a1} with a value changes node settings and is not allowed"
        elif op in (
            apsw.SQLITE_INSERT,
            apsw.SQLITE_UPDATE,
            apsw.SQLITE_DELETE,
            apsw.SQLITE_DROP_TABLE,
            apsw.SQLITE_ALTER_TABLE,
            apsw.SQLITE_CREATE_INDEX,
            apsw.SQLITE_CREATE_TRIGGER,
        ):
            # The table is the first argument, except for these three (SQLite's docs).
            names_table_second = (
                apsw.SQLITE_CREATE_INDEX,
                apsw.SQLITE_CREATE_TRIGGER,
                apsw.SQLITE_ALTER_TABLE,
            )
            table = (a2 if op in names_table_second else a1) or ""
            if table.lower() in INTERNAL_TABLES | REPLICATED_INTERNAL_TABLES:
                reason = f"table {table} belongs to replidb and cannot be changed"
        if reason is not None:
            self.reason = reason
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK


# (The row id check above covers nearly every INSERT; this covers one that re-inserts
# the connection's previous row id.)
_INSERTS = re.compile(r"\s*(?:WITH\b.*?\)\s*)?(?:INSERT|REPLACE)\b", re.IGNORECASE | re.DOTALL)


def open_connections(
    path: Path, schema: str, make_writer: Callable[[], apsw.Connection] | None = None
) -> tuple[apsw.Connection, apsw.Connection]:
    """A store's writer (WAL, fsync on commit, ``schema`` created) and its read-only
    reader, both with a busy timeout; InternalError names the file that failed."""
    try:
        writer = make_writer() if make_writer is not None else apsw.Connection(str(path))
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=FULL")
        writer.execute(schema)
        reader = apsw.Connection(str(path))
        reader.execute("PRAGMA query_only=ON")
    except apsw.Error as exc:
        raise InternalError(f"cannot open database {path}: {exc}") from None
    for conn in (writer, reader):
        conn.set_busy_timeout(5000)
    return writer, reader


def install_guard(conn: apsw.Connection) -> _Guard:
    guard = _Guard()
    conn.authorizer = guard
    return guard


def translate(exc: BaseException, guard: _Guard | None = None) -> Error:
    """apsw's exception -> a replidb error with SQLite's one-line message."""
    if isinstance(exc, Error):
        return exc
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, apsw.AuthError) and guard is not None and guard.reason:
        return SQLError(guard.reason)
    if isinstance(exc, apsw.ConstraintError):
        return ConstraintError(message)
    if isinstance(
        exc,
        apsw.SQLError
        | apsw.BindingsError
        | apsw.MismatchError
        | apsw.RangeError
        | apsw.TooBigError
        | apsw.AuthError
        | TypeError
        | ValueError
        | OverflowError,
    ):
        return SQLError(message)
    if isinstance(exc, apsw.ExecutionCompleteError | apsw.IncompleteExecutionError):
        return BadRequest(message)
    return InternalError(f"{type(exc).__name__}: {message}")


def _params(statement: Statement) -> Sequence[Any] | dict[str, Any]:
    if statement.params is None:
        return ()
    return statement.params


def run_statements(
    conn: apsw.Connection,
    statements: Sequence[Statement],
    on_statement: Callable[[str, Any], None] | None = None,
) -> list[StatementResult]:
    """Execute each Statement (its text may hold several SQL statements); collect rows.

    ``on_statement(sql, bindings)`` is called before each individual SQL statement runs.
    """
    results: list[StatementResult] = []
    for statement in statements:
        cursor = conn.cursor()
        if on_statement is not None:

            def trace(_cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
                on_statement(sql, bindings)
                return True

            cursor.exec_trace = trace
        before = conn.total_changes()
        rowid_before = conn.last_insert_rowid()
        cursor.execute(statement.sql, _params(statement))
        columns: list[str] = []
        rows: list[list[Any]] = []
        try:
            columns = [d[0] for d in cursor.get_description()]
        except apsw.ExecutionCompleteError:
            pass
        for row in cursor:
            rows.append(list(row))
        changed = conn.total_changes() - before
        # A row id only for a statement that inserted one: SQLite keeps the connection's
        # last one across UPDATEs and DELETEs, which would make the same transaction's
        # results differ from one connection (and one leader) to the next.
        rowid = conn.last_insert_rowid()
        inserted = changed and (rowid != rowid_before or _INSERTS.match(statement.sql))
        results.append(
            StatementResult(
                columns=columns,
                rows=rows,
                rowcount=conn.changes() if changed else (len(rows) if columns else -1),
                lastrowid=rowid if inserted else None,
            )
        )
    return results


def run_read(
    conn: apsw.Connection, guard: _Guard, statements: Sequence[Statement]
) -> list[StatementResult]:
    """Run statements on a read-only connection (``PRAGMA query_only``) in a
    transaction that is always rolled back; NeedsWrite if any statement writes."""
    conn.execute("BEGIN")
    guard.user = True
    try:
        return run_statements(conn, statements)
    except apsw.ReadOnlyError:
        raise NeedsWrite() from None
    except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
        raise translate(exc, guard) from None
    finally:
        guard.user = False
        conn.execute("ROLLBACK")


def check_expected(results: Sequence[StatementResult], expect: str, count: int) -> None:
    """An interactive transaction's commit: its first ``count`` statements must give
    the results its client saw (``expect``), or nothing is applied."""
    if expect and results_digest(results[:count]) != expect:
        raise Conflict(
            "the transaction's reads changed before it committed (a concurrent write, or "
            "a non-deterministic function): nothing was applied; run it again"
        )


def changes_data(segments: Sequence[Segment]) -> bool:
    """True unless a write touched nothing but replidb_client_sessions (a read-only
    transaction's bookkeeping, which need not be logged)."""
    for segment in segments:
        if not isinstance(segment, Changes):
            return True  # DDL
        if any(c.name != "replidb_client_sessions" for c in apsw.Changeset.iter(segment.changeset)):
            return True
    return False


def capture_changes(
    conn: apsw.Connection,
    statements: Sequence[Statement],
    guard: _Guard,
    epilogue: Callable[[list[StatementResult], list[Segment]], None] | None = None,
    full_images: bool = False,
) -> tuple[list[StatementResult], list[Segment]]:
    """Run statements inside the caller's open transaction and return their results and
    the logical segments (DDL text and row changesets, in execution order).
    ``epilogue(results, segments)`` runs last, seeing the user's segments, with its own
    writes captured in a final segment. User statements run under ``guard``; the
    session's own savepoints and the epilogue do not. ``full_images``: give every
    UPDATE its complete after-image (for filtered followers)."""
    segments: list[Segment] = []

    def flush() -> None:
        _flush(conn, session, segments, full_images)

    session = _new_session(conn)
    statements = [_with_autoincrement(s) for s in statements]

    def cut(sql: str, bindings: Any) -> None:
        nonlocal session
        if not _DDL_RE.match(sql):
            return
        if bindings:
            raise SQLError("DDL with parameters cannot be replicated: inline the values")
        guard.user = False
        temporary = _TEMP_RE.match(sql) is not None
        undo = None if temporary else ddl_undo.plan(conn, sql)
        if undo is not None and undo.pre:
            # Record what the DDL will destroy as row changes, in the current segment.
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
            try:
                for statement in undo.pre:
                    conn.execute(statement)
            finally:
                conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        flush()
        session = _new_session(conn)
        guard.user = True
        if not temporary:  # temp objects live and die on this connection only
            segments.append(
                DDL(sql.strip().rstrip(";").strip(), undo.undo if undo is not None else None)
            )

    guard.user = True
    try:
        results = run_statements(conn, statements, cut)
        guard.user = False
        if epilogue is not None:
            flush()
            session.close()
            session = _new_session(conn)
            epilogue(results, segments)
        flush()
    finally:
        guard.user = False
        session.close()
    return results, segments


def _with_autoincrement(statement: Statement) -> Statement:
    """Create INTEGER PRIMARY KEYs as AUTOINCREMENT (see rowid_guard). Positional
    parameters cannot be shared out among several statements, so such a text is only
    rewritten when it is a single statement."""
    if "PRIMARY" not in statement.sql.upper():
        return statement
    pieces = split_sql(statement.sql)
    if statement.params and isinstance(statement.params, list) and len(pieces) > 1:
        return statement
    rewritten = "".join(add_autoincrement(piece) for piece in pieces)
    if rewritten == statement.sql:
        return statement
    return Statement(rewritten, statement.params)


def _new_session(conn: apsw.Connection) -> apsw.Session:
    session = apsw.Session(conn, "main")
    # Tables without a declared primary key are keyed by rowid (SQLite >= 3.42).
    session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
    session.table_filter(lambda name: name not in INTERNAL_TABLES)
    session.attach()
    return session


def _flush(
    conn: apsw.Connection, session: apsw.Session, segments: list[Segment], full_images: bool
) -> None:
    changeset = session.changeset()
    if changeset:
        columns = _column_names(conn, changeset)
        images = _update_images(conn, changeset, columns) if full_images else []
        segments.append(Changes(changeset, columns, images))


def _update_images(
    conn: apsw.Connection, changeset: bytes, columns: dict[str, list[str]]
) -> list[list[Any]]:
    """Each UPDATE's whole row as it stands now (the changeset has the key and the
    changed columns only; a filtered follower must judge the whole new row)."""
    images: list[list[Any]] = []
    for change in iter_changeset(changeset):
        if change.op != "UPDATE":
            continue
        names = columns[change.table]
        assert change.old is not None
        keys = [(n, v) for n, v, k in zip(names, change.old, change.pk, strict=True) if k]
        row = conn.execute(
            f"SELECT {', '.join(map(quote_name, names))} FROM {quote_name(change.table)} "
            f"WHERE {' AND '.join(f'{quote_name(n)} IS ?' for n, _ in keys)}",
            [v for _, v in keys],
        ).fetchone()
        if row is None:
            raise InternalError(f"updated row of {change.table} vanished before it was logged")
        images.append(list(row))
    return images


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_names(conn: apsw.Connection, changeset: bytes) -> dict[str, list[str]]:
    """Each changed table's column names, in the changeset's order (the logical stream
    carries them so readers need no schema). Read now: a later DDL may change them."""
    row = conn.execute("PRAGMA schema_version").fetchone()
    version = int(row[0]) if row else 0
    cached = _COLUMNS.get(conn)
    if cached is None or cached[0] != version:
        cached = (version, {})  # (a schema change, here or by a snapshot install)
        _COLUMNS[conn] = cached
    known = cached[1]
    names: dict[str, list[str]] = {}
    for change in apsw.Changeset.iter(changeset):  # (apsw's C reader: cheaper than ours)
        table = change.name
        if table in names:
            continue
        width = change.column_count
        if (table, width) not in known:
            declared = [
                row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))
            ]
            # Tables keyed by their hidden rowid carry it as the first column.
            known[(table, width)] = declared if len(declared) == width else ["rowid", *declared]
        names[table] = known[(table, width)]
    return names


# Per connection: (schema version, (table, changeset width) -> column names). Reading
# pragma_table_info for every captured write was 7% of a busy leader's time.
_COLUMNS: weakref.WeakKeyDictionary[apsw.Connection, tuple[int, dict[tuple[str, int], list[str]]]]
_COLUMNS = weakref.WeakKeyDictionary()
