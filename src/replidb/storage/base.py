"""What the node needs from a store, whatever the stream format, and which store
serves which format.

``logical``, ``statement`` and ``mixed`` keep data, log and node state in one SQLite
file (storage/sqlite_store.py); ``wal`` keeps the replicated data file apart from the
node's own log, because followers must hold the leader's exact bytes
(storage/physical_store.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from replidb.core.messages import Entry, HardState
from replidb.errors import Error
from replidb.storage.migrate import convert_wal_layout, has_wal_layout
from replidb.storage.physical_store import PhysicalStore
from replidb.storage.snapshot_files import SnapshotInfo
from replidb.storage.sqlite_store import SQLiteStore, WriteOutcome, WriteRequest
from replidb.transport.wire import Statement, StatementResult

__all__ = ["STREAMS", "NodeStore", "open_store"]

STREAMS = ("statement", "wal", "logical", "mixed")


class NodeStore(Protocol):
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def term(self, index: int) -> int: ...
    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]: ...
    def hard_state(self) -> HardState: ...
    def applied_index(self) -> int: ...
    def discarded_count(self) -> int: ...
    def persist(
        self, hard_state: HardState | None, truncate_from: int | None, entries: Sequence[Entry]
    ) -> None: ...
    def apply(self, entries: Sequence[Entry]) -> None: ...
    def note_committed(self, index: int) -> None: ...
    def execute_read(self, statements: Sequence[Statement]) -> list[StatementResult]: ...
    def execute_write(
        self,
        statements: Sequence[Statement],
        term: int,
        index: int,
        client_id: str = "",
        seq: int = 0,
        dry_run: bool = False,
        expect: str = "",
        expect_count: int = 0,
    ) -> WriteOutcome: ...
    def execute_batch(
        self, requests: Sequence[WriteRequest], term: int, first_index: int
    ) -> list[WriteOutcome | Error]: ...
    def raise_rowid_floors(self) -> int: ...
    def log_stats(self) -> tuple[int, int]: ...
    def compact(self, up_to: int) -> int: ...
    def create_snapshot(
        self, directory: Path, committed_index: int | None = None
    ) -> SnapshotInfo: ...
    def install_snapshot(
        self, path: Path, index: int, term: int, committed_index: int, membership: bytes = b""
    ) -> int: ...
    def configs(self) -> list[Entry]: ...
    def membership_at(self, index: int) -> bytes: ...
    def close(self) -> None: ...


def open_store(
    data_dir: Path,
    stream: str = "logical",
    row_images: str = "minimal",
    page_size: int = 4096,
    subscription: Sequence[str] = (),
) -> NodeStore:
    """The store for ``stream``; ValueError names a bad combination."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream format {stream!r}: choose {', '.join(STREAMS)}")
    if subscription and stream != "logical":
        raise ValueError("partial replication (--subscribe) needs --stream logical")
    data_dir.mkdir(parents=True, exist_ok=True)
    single = data_dir / "replidb.db"
    if stream == "wal":
        if single.exists():
            raise ValueError(
                f"{data_dir} holds a logical/statement/mixed node: wal shipping needs every "
                "follower to start from the leader's exact file; seed this node from a "
                "copy of the leader's data.db instead (docs/streams.md)"
            )
        return PhysicalStore(data_dir, page_size=page_size)
    if has_wal_layout(data_dir) and not single.exists():
        convert_wal_layout(data_dir, single)
    return SQLiteStore(single, stream=stream, row_images=row_images, subscription=subscription)
