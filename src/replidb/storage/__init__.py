"""Adapters to durable storage: SQLite through apsw (data, log and node state in one file)."""

from replidb.storage.executor import NeedsWrite
from replidb.storage.sqlite_store import SQLiteStore, WriteOutcome

__all__ = ["NeedsWrite", "SQLiteStore", "WriteOutcome"]
