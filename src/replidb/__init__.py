"""replidb: a replicated SQL database — SQLite on every node, replicating over the network.

    import replidb
    conn = replidb.connect("127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103")
    cur = conn.cursor()
    cur.execute("INSERT INTO t(v) VALUES (?)", ("x",))
    conn.commit()          # the transaction's statements travel as one atomic request

    kv = replidb.kv_connect("127.0.0.1:7101,...")   # a leaderless cluster's key API
    kv.put("users", {"id": 1, "name": "ada"}); kv.get("users", 1).rows

This module is a DB-API 2.0 driver; every failure is a ``replidb.Error`` (see errors.py).
"""

from replidb.client import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Connection,
    Cursor,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    apilevel,
    connect,
    paramstyle,
    threadsafety,
)
from replidb.errors import (
    BadRequest,
    Conflict,
    ConstraintError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotLeader,
    NotSupportedError,
    OperationalError,
    OutcomeUnknown,
    ProgrammingError,
    ProtocolError,
    SQLError,
    Unavailable,
    Warning,
)

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "BadRequest",
    "Binary",
    "Conflict",
    "Connection",
    "ConstraintError",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "KvClient",
    "KvRead",
    "NotLeader",
    "NotSupportedError",
    "OperationalError",
    "OutcomeUnknown",
    "ProgrammingError",
    "ProtocolError",
    "SQLError",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Unavailable",
    "Warning",
    "apilevel",
    "connect",
    "kv_connect",
    "paramstyle",
    "threadsafety",
]

_LAZY = {"KvClient", "KvRead", "kv_connect"}  # replidb.client.kv, imported when first used


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from replidb.client import kv

        return getattr(kv, name)
    raise AttributeError(f"module 'replidb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
