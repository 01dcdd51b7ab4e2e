"""Raw page I/O on the wal stream's replicated data file (``data.db``): creating it the
same way on every node, reading its header, checking a record against it (the version
lock), and writing page images into it.

Pages are written with ``pwrite`` while no SQLite connection has the file open, which
is what makes stock apsw enough (no ``sqlite_dbpage``): SQLite cannot notice pages that
change behind its back, so every connection is closed first and reopened afterwards.

Fault injection for tests: ``REPLIDB_DEBUG_APPLY_PAGE_DELAY_MS`` makes ``write_pages``
sleep that long before each page, so a test can kill the process mid-apply;
``REPLIDB_DEBUG_APPLY_KILL_AFTER_PAGES=N`` makes the process SIGKILL itself once it has
written N pages, at a point where the batch it is writing is only partly written.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import apsw

from replidb.errors import InternalError, ProtocolError
from replidb.storage.wal_reader import pread_exact
from replidb.stream.physical import PageRecord

__all__ = [
    "APPLY_DELAY_ENV",
    "APPLY_KILL_ENV",
    "check_record",
    "create_data_file",
    "file_size",
    "read_header",
    "write_pages",
]

APPLY_DELAY_ENV = "REPLIDB_DEBUG_APPLY_PAGE_DELAY_MS"
APPLY_KILL_ENV = "REPLIDB_DEBUG_APPLY_KILL_AFTER_PAGES"
_pages_written = 0  # in this process, for APPLY_KILL_ENV


def create_data_file(path: Path, page_size: int, schema: str) -> None:
    """Create the data file the same way on every node, so fresh nodes start
    byte-identical; atomically (built aside, then renamed), so a crash leaves either no
    file or a complete one."""
    aside = path.with_name(path.name + ".creating")
    for stale in (aside, Path(f"{aside}-wal"), Path(f"{aside}-shm")):
        stale.unlink(missing_ok=True)
    conn = apsw.Connection(str(aside))
    try:
        conn.execute(f"PRAGMA page_size={int(page_size)}")  # before the first table
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(schema)
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        conn.close()
    _fsync_path(aside)
    for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)  # a WAL without its database would be replayed into it
    os.replace(aside, path)
    for leftover in (Path(f"{aside}-wal"), Path(f"{aside}-shm")):
        leftover.unlink(missing_ok=True)
    _fsync_path(path.parent)


def read_header(fd: int, path: Path) -> tuple[int, int]:
    """The page size and the file format (header bytes 18 and 19, as 256*b18 + b19)."""
    header = pread_exact(fd, 100, 0)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise InternalError(f"{path} is not an SQLite database")
    size = int.from_bytes(header[16:18], "big")
    return (65536 if size == 1 else size), header[18] * 256 + header[19]


def check_record(record: PageRecord, page_size: int, file_format: int) -> None:
    """The version lock (stream/physical.py): ProtocolError, one line, if this node
    could not apply the leader's pages."""
    version = apsw.sqlite_lib_version()
    if record.sqlite_version != version:
        raise ProtocolError(
            f"wal stream: the leader runs SQLite {record.sqlite_version} but this node "
            f"runs {version}; wal shipping needs the same SQLite version on every node "
            "(upgrade through --stream logical)"
        )
    if record.page_size != page_size:
        raise ProtocolError(
            f"wal stream: the leader's pages are {record.page_size} bytes but this node's "
            f"database uses {page_size}; wal shipping needs identical page sizes "
            "(run the cluster with --stream logical instead)"
        )
    if record.file_format != file_format:
        raise ProtocolError(
            f"wal stream: the leader's file format is {record.file_format:#06x} but this "
            f"node's is {file_format:#06x}; wal shipping needs identical formats "
            "(run the cluster with --stream logical instead)"
        )


def write_pages(fd: int, path: Path, records: Sequence[PageRecord]) -> None:
    """Write records into the file as one checkpoint of them would: each page's last
    image (pages beyond the final size skipped), then truncate or extend to the last
    record's size, then fsync. No connection may have the file open."""
    images: dict[int, bytes] = {}
    for record in records:
        images.update(record.pages)
    size = records[-1].db_pages
    page_size = records[-1].page_size
    global _pages_written
    delay = float(os.environ.get(APPLY_DELAY_ENV) or 0) / 1000
    kill_after = int(os.environ.get(APPLY_KILL_ENV) or 0)
    try:
        pages = [pgno for pgno in sorted(images) if pgno <= size]
        for done, pgno in enumerate(pages, start=1):
            if delay:
                time.sleep(delay)
            _pwrite_all(fd, images[pgno], (pgno - 1) * page_size)
            _pages_written += 1
            if kill_after and _pages_written >= kill_after and done < len(pages):
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: die mid-apply
        os.ftruncate(fd, size * page_size)
        os.fsync(fd)
    except OSError as exc:
        raise InternalError(f"cannot write {path}: {exc}") from None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
