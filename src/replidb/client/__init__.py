"""The replidb Python client: a DB-API 2.0 (PEP 249) driver plus the low-level ``Client``.

import replidb.client
conn = replidb.client.connect("127.0.0.1:7101,127.0.0.1:7102")
with conn:                                   # commit on success, rollback on error
    conn.execute("INSERT INTO t VALUES (?)", (1,))
print(conn.execute("SELECT * FROM t").fetchall())
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from replidb.client.connection import Connection, Cursor, connect, is_read_only, split_statements
from replidb.client.transport import Client, check_consistency, parse_addresses, probe_status

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Client",
    "Connection",
    "Cursor",
    "Date",
    "DateFromTicks",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "apilevel",
    "check_consistency",
    "connect",
    "is_read_only",
    "paramstyle",
    "parse_addresses",
    "probe_status",
    "split_statements",
    "threadsafety",
]

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"  # named (:name) parameters work too, passed as a mapping

# Constructors and type objects required by PEP 249. SQLite has no date type: dates
# travel as ISO text, exactly as the parameters converter sends them.
Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:
    return Timestamp(*time.localtime(ticks)[:6])


class _DBAPIType:
    """Compares equal to any of the type codes it names (replidb reports none yet)."""

    def __init__(self, *codes: str) -> None:
        self.codes = frozenset(codes)

    def __eq__(self, other: Any) -> bool:
        return other in self.codes

    def __hash__(self) -> int:
        return hash(self.codes)


STRING = _DBAPIType("TEXT")
BINARY = _DBAPIType("BLOB")
NUMBER = _DBAPIType("INTEGER", "REAL", "NUMERIC")
DATETIME = _DBAPIType("DATETIME")
ROWID = _DBAPIType("ROWID")
