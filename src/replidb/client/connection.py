"""The DB-API 2.0 (PEP 249) driver: ``connect()``, ``Connection`` and ``Cursor``.

Transactions are interactive and optimistic, and hold nothing on the server between
calls. The client keeps the transaction's statements; whenever the application needs
a result inside it (a read, or a write's ``rowcount``/``lastrowid``), the leader runs
every statement so far and rolls back (a dry run), so the transaction sees its own
writes. ``commit()`` sends them all as ONE atomic, exactly-once request together with
a digest of every result the application saw; the leader applies them only if they
give the same results again, and otherwise answers ``Conflict`` with nothing applied
(a concurrent write changed what the transaction read: run it again). So:

- the transaction is serializable: it commits as if it ran alone at commit time;
- a vanished client leaves nothing behind (no lock, no open transaction);
- a failover during the transaction costs nothing unless its data changed; only a
  commit in flight can end as ``OutcomeUnknown`` (and a retry applies it at most once).

Without autocommit a transaction starts at the first write, as in ``sqlite3``: reads
before it run on their own, with the connection's consistency level. After an
explicit ``BEGIN`` every statement is part of the transaction. Results not yet
needed are not fetched: a bulk insert costs one request, at commit.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from replidb.client.transport import Client, check_sync
from replidb.errors import Conflict, InterfaceError, ProtocolError, SQLError
from replidb.transport import wire

__all__ = ["Connection", "Cursor", "connect", "is_read_only", "split_statements"]

# Comments, string/identifier literals, or a semicolon: the only things a splitter must see.
_TOKEN = re.compile(
    r"--[^\n]*|/\*.*?(?:\*/|\Z)|'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|`[^`]*`?|\[[^\]]*\]?|;",
    re.DOTALL,
)
_WORD = re.compile(r"[A-Za-z_]+")
_WITH_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
_CONTROL = re.compile(
    r"^(BEGIN(\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?|COMMIT|END|ROLLBACK)(\s+TRANSACTION)?$",
    re.IGNORECASE,
)
_INT64 = range(-(2**63), 2**63)


def _strip(sql: str) -> str:
    """``sql`` with comments removed and literals blanked (keywords stay, data does not)."""

    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        return " " if tok.startswith(("--", "/*")) else (";" if tok == ";" else "''")

    return _TOKEN.sub(repl, sql)


def split_statements(sql: str) -> list[str]:
    """Split on top-level semicolons into keyword skeletons (comments and literals elided).

    Only for classification: a trigger body is split wrongly, but its CREATE is a write
    anyway, so the verdict on the whole text stays right."""
    return [part.strip() for part in _strip(sql).split(";") if part.strip()]


def _is_read(skeleton: str) -> bool:
    m = _WORD.match(skeleton)
    keyword = m.group(0).upper() if m else ""
    if keyword in ("SELECT", "VALUES", "EXPLAIN"):
        return True
    if keyword == "PRAGMA":
        return "=" not in skeleton
    if keyword == "WITH":
        return _WITH_WRITE.search(skeleton) is None
    return False


def is_read_only(sql: str) -> bool:
    """True if every statement in ``sql`` is a read (SELECT, VALUES, EXPLAIN, PRAGMA
    without '=', WITH without INSERT/UPDATE/DELETE/REPLACE). Empty text is read-only."""
    return all(_is_read(part) for part in split_statements(sql))


def _param(value: Any, position: object) -> Any:
    if value is None or isinstance(value, (float, str, bytes)):
        return value
    if isinstance(value, int):  # includes bool, stored as 0/1 like sqlite3
        if int(value) not in _INT64:
            raise SQLError(f"parameter {position}: integer {value} does not fit in 64 bits")
        return int(value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, datetime.datetime):  # the ISO text sqlite3's adapters used
        return value.isoformat(" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise SQLError(f"parameter {position}: type {type(value).__name__} is not supported")


def _statement(sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> wire.Statement:
    if not isinstance(sql, str):
        raise InterfaceError(f"SQL must be a str, not {type(sql).__name__}")
    if params is None:
        return wire.Statement(sql)
    if isinstance(params, Mapping):
        return wire.Statement(sql, {str(k): _param(v, repr(k)) for k, v in params.items()})
    if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
        raise InterfaceError("parameters must be a sequence (qmark) or a mapping (named)")
    return wire.Statement(sql, [_param(v, i + 1) for i, v in enumerate(params)])


class Cursor:
    """A DB-API cursor. Rows are fetched whole with the reply; fetching is local."""

    arraysize: int

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.arraysize = 1
        self._description: tuple[tuple[str, None, None, None, None, None, None], ...] | None = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0
        self._op = 0  # bumped per execute: a commit fills in only the latest operation
        self._waiting = False  # the latest operation's results are not fetched yet
        self._closed = False

    # Results of a write inside a transaction are fetched when first looked at.

    @property
    def description(self) -> tuple[tuple[str, None, None, None, None, None, None], ...] | None:
        self._sync()
        return self._description

    @property
    def rowcount(self) -> int:
        self._sync()
        return self._rowcount

    @property
    def lastrowid(self) -> int | None:
        self._sync()
        return self._lastrowid

    def _sync(self) -> None:
        if self._waiting and not self._closed:
            self.connection._materialize()

    def execute(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> Cursor:
        self._check()
        statement = _statement(sql, parameters)
        control = _CONTROL.match(" ".join(_strip(sql).replace(";", " ").split()))
        if control:
            # No reset: "COMMIT" on the cursor that buffered writes must show their results.
            self.connection._control(control.group(1).split()[0].upper())
            return self
        self._reset()
        if split_statements(sql):
            self.connection._run(self, self._op, [statement], read=is_read_only(sql))
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterator[Any] | Sequence[Any]) -> Cursor:
        self._check()
        if is_read_only(sql):
            raise SQLError("executemany() is for writes; use execute() for a query")
        statements = [_statement(sql, params) for params in seq_of_parameters]
        self._reset()
        if statements:
            self.connection._run(self, self._op, statements, read=False)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        self._check()
        self._sync()
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._check()
        self._sync()
        end = self._pos + (self.arraysize if size is None else size)
        rows = self._rows[self._pos : end]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._check()
        self._sync()
        rows = self._rows[self._pos :]
        self._pos = len(self._rows)
        return rows

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def setinputsizes(self, sizes: Any) -> None:  # DB-API: may do nothing
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:  # DB-API: may do nothing
        pass

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self

    def __next__(self) -> tuple[Any, ...]:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("cursor is closed")
        self.connection._check()

    def _reset(self) -> None:
        self._op += 1
        self._description = None
        self._rowcount = -1
        self._lastrowid = None
        self._rows = []
        self._pos = 0
        self._waiting = False

    def _fill(self, op: int, results: Sequence[wire.StatementResult]) -> None:
        """Take the results of operation ``op`` unless a later execute replaced it."""
        if op != self._op or not results:
            return
        last = results[-1]
        columns = tuple((name, None, None, None, None, None, None) for name in last.columns)
        self._description = columns or None  # None: the statement returned no result set
        self._rows = [tuple(row) for row in last.rows]
        self._pos = 0
        # executemany: the total, as sqlite3 reports it; -1 stays -1 if the server says so
        counts = [r.rowcount for r in results]
        self._rowcount = sum(counts) if all(c >= 0 for c in counts) else last.rowcount
        self._lastrowid = last.lastrowid
        self._waiting = False


class Connection:
    """A DB-API connection to a replidb cluster (any node; writes reach the leader)."""

    def __init__(self, client: Client, *, autocommit: bool = False) -> None:
        self.client = client
        self._autocommit = autocommit
        self._explicit = False  # BEGIN seen in autocommit mode: a transaction until COMMIT
        # The open transaction: its statements (with the cursor operation each belongs
        # to), and the results the application may have seen for the first ones.
        self._pending: list[tuple[wire.Statement, Cursor, int]] = []
        self._seen: list[wire.StatementResult] = []
        self._closed = False

    @property
    def autocommit(self) -> bool:
        """True: every execute is its own atomic request (until an explicit BEGIN)."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        if value and not self._autocommit and self._pending:
            self.commit()  # as sqlite3 does: switching autocommit on ends the transaction
        self._autocommit = bool(value)

    @property
    def sync(self) -> str:
        """This connection's commit policy for writes ("" = the cluster's default)."""
        return self.client.sync

    @sync.setter
    def sync(self, policy: str | None) -> None:
        self.client.sync = check_sync(policy or "")

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (statements waiting for commit())."""
        return bool(self._pending) or self._explicit

    def cursor(self) -> Cursor:
        self._check()
        return Cursor(self)

    def execute(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> Cursor:
        """Shortcut (as in sqlite3): a new cursor, executed."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterator[Any] | Sequence[Any]) -> Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def commit(self) -> None:
        """Send the transaction as one atomic request, with a digest of every result
        the application saw: the leader applies it only if they are the same now
        (else Conflict, nothing applied). Then fill in the cursors not filled yet.

        The transaction ends even if this fails: after OutcomeUnknown, committing the
        same writes again under a new sequence number could apply them twice."""
        self._check()
        pending, seen = self._pending, self._seen
        self._pending, self._seen, self._explicit = [], [], False
        if not pending:
            return
        expect = (wire.results_digest(seen), len(seen)) if seen else ("", 0)
        results = self.client.execute([s for s, _, _ in pending], write=True, expect=expect)
        self._distribute(pending, results)

    def rollback(self) -> None:
        """End the transaction; the server holds nothing of it, so nothing to undo."""
        self._check()
        self._pending, self._seen, self._explicit = [], [], False

    def close(self) -> None:
        """Close; uncommitted writes are discarded (DB-API: an implicit rollback)."""
        if not self._closed:
            self._pending, self._seen = [], []
            self._closed = True
            self.client.close()

    def __enter__(self) -> Connection:
        self._check()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        elif not self._closed:
            self.rollback()

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("connection is closed")

    def _control(self, keyword: str) -> None:
        if keyword == "BEGIN":
            if self._explicit:
                raise SQLError("cannot start a transaction within a transaction")
            self._explicit = self._autocommit  # without autocommit one is always open
        elif keyword in ("COMMIT", "END"):
            self.commit()
        else:
            self.rollback()

    def _run(
        self, cursor: Cursor, op: int, statements: list[wire.Statement], *, read: bool
    ) -> None:
        in_transaction = self._explicit or (
            not self._autocommit and (bool(self._pending) or not read)
        )
        if not in_transaction:
            cursor._fill(op, self.client.execute(statements, write=not read))
            return
        self._pending.extend((s, cursor, op) for s in statements)
        cursor._waiting = True
        if read:  # its rows are wanted now
            self._materialize()

    def _materialize(self) -> None:
        """Fetch the results of the transaction's statements not fetched yet: the leader
        runs them all and rolls back. What the application saw before must not have
        changed meanwhile (it would commit on stale reads): Conflict ends it then."""
        if len(self._seen) == len(self._pending):
            return
        pending = self._pending
        results = self.client.execute([s for s, _, _ in pending], write=False, dry_run=True)
        if len(results) != len(pending):
            raise ProtocolError(
                f"server returned {len(results)} results for {len(pending)} statements"
            )
        if results[: len(self._seen)] != self._seen:
            self._pending, self._seen, self._explicit = [], [], False
            raise Conflict(
                "a concurrent write changed what this transaction had read: it was rolled "
                "back, nothing was applied; run it again"
            )
        fresh = len(self._seen)
        self._seen = list(results)
        self._distribute(pending[fresh:], results[fresh:])

    @staticmethod
    def _distribute(
        pending: list[tuple[wire.Statement, Cursor, int]],
        results: list[wire.StatementResult],
    ) -> None:
        if len(results) != len(pending):
            raise ProtocolError(
                f"server returned {len(results)} results for {len(pending)} statements"
            )
        grouped: dict[tuple[int, int], tuple[Cursor, list[wire.StatementResult]]] = {}
        for (_, cursor, op), result in zip(pending, results, strict=True):
            grouped.setdefault((id(cursor), op), (cursor, []))[1].append(result)
        for (_, op), (cursor, cursor_results) in grouped.items():
            cursor._fill(op, cursor_results)


def connect(
    addresses: str | list[str],
    consistency: str = "session",
    timeout: float = 10.0,
    autocommit: bool = False,
    sync: str | None = None,
) -> Connection:
    """Connect to a replidb cluster. ``addresses``: ``"h1:p1,h2:p2"`` or a list.

    ``consistency`` applies to every read: ``session`` (the default: you read your own
    writes and never go back in time, wherever your reads land), ``any`` (whatever the
    node you reach has applied) or ``leader``. ``sync`` overrides the cluster's commit
    policy for this connection's writes
    (``async``, ``semi-sync:K``, ``quorum``, ``all``), like PostgreSQL's
    ``synchronous_commit``; set ``conn.sync`` to change it for later transactions.
    Nothing is sent yet: the first request goes to the first reachable address."""
    client = Client(addresses, timeout=timeout, consistency=consistency, sync=sync or "")
    return Connection(client, autocommit=autocommit)
