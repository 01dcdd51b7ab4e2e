"""Adapters to durable storage: SQLite through apsw, one store per stream format."""

from replidb.storage.base import STREAMS, NodeStore, open_store
from replidb.storage.executor import NeedsWrite
from replidb.storage.sqlite_store import SQLiteStore, WriteOutcome

__all__ = ["STREAMS", "NeedsWrite", "NodeStore", "SQLiteStore", "WriteOutcome", "open_store"]
