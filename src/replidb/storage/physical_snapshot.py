"""Snapshots for the ``wal`` stream: the snapshot is the physical data file itself.

Every node's ``data.db`` is byte-identical at the same log position, and a follower
keeps applying page images to it after an install, so a snapshot must be exactly those
bytes: a logical copy (``VACUUM INTO``, the backup API) lays pages out anew and would
leave the follower's file different from everyone else's, after which shipped pages
land in the wrong places. So a snapshot is a byte copy.

**Making one** (``create_snapshot``) runs in a worker thread while the node's event loop
keeps using the store, so it never touches the store's connections. Few things change
the main file, all on the loop: checkpoints, follower applies, rollbacks and installs.
Each holds the store's ``_file_lock`` for the whole change, including the ``node.db``
bookkeeping that goes with it; a leader's writes only append to the WAL and take no
lock (its periodic checkpoint is skipped while a copy runs, and retried on a later
write). Under that lock the thread reads, in one ``node.db`` read transaction
on a connection of its own, the applied index A, the WAL position logged so far and
the undo data; copies the main file through the store's descriptor (``pread``: opening
and closing another descriptor on it would drop SQLite's POSIX locks); and reads the
logged WAL frames. That is the file at A, which it then rebuilds in the copy, away from
the lock: the logged frames written as a checkpoint would, then the before-images of
the entries above the snapshot point written newest first, as a rollback would. So the
loop waits on the lock only if it must change the main file while the copy runs; a
leader, which is who serves snapshots, normally never does.

The snapshot point is the commit index C passed in (or A if that is lower). Undo data
is dropped once an entry commits, and the commit index may have moved on since the
caller read it, so the point is moved up to the newest write at or below A whose undo
is gone (it committed) and never below the compaction point: always committed, and
every write above it can be rolled back in the copy.

**Installing one** (``install_snapshot``) prepares the file aside (copied, fsynced,
its header checked against this node: the version lock), then records an
``installing`` marker in ``node.db`` together with the descriptions of what is lost
(an ex-leader's own writes above the commit index, and any write above the snapshot's
index; see ``_lost``). From the marker on the install only rolls forward, here or on
the next open (``finish_install``): close every connection on ``data.db``, remove its
WAL and shared memory (SQLite would replay an old WAL into the new file), rename the
prepared file over it, and empty the log in one ``node.db`` transaction that sets the
applied index and the snapshot position and clears the marker. A crash before the
marker leaves the old state (the prepared file is removed on open); after it, the new
one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from replidb.core.messages import EntryKind
from replidb.errors import InternalError, ProtocolError
from replidb.storage import snapshot_files
from replidb.storage.node_log import membership_at
from replidb.storage.page_io import read_header
from replidb.storage.snapshot_files import SnapshotInfo
from replidb.storage.wal_reader import EMPTY_POSITION, WalPosition, pread_exact
from replidb.stream.physical import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    decode_page_record,
    parse_wal_frames,
    parse_wal_header,
)

if TYPE_CHECKING:
    from replidb.storage.physical_store import PhysicalStore

__all__ = [
    "PREPARED_SUFFIX",
    "check_snapshot_file",
    "create_snapshot",
    "finish_install",
    "install_snapshot",
    "recover_install",
]

PREPARED_SUFFIX = ".installing"  # data.db.installing: the snapshot being installed
_LOST_REASON = "replaced by a snapshot from the leader"  # as SQLiteStore says it
_COPY_CHUNK = 4 << 20
_WAL_READ_ATTEMPTS = 5


@dataclass(frozen=True)
class _Pages:
    """A file state to write over the copy: page images and the size in pages."""

    db_pages: int
    images: dict[int, bytes]


@dataclass(frozen=True)
class _State:
    """What ``node.db`` says while the main file cannot change."""

    applied: int
    position: WalPosition
    index: int  # the snapshot point
    term: int
    undo: _Pages | None  # the state before entry index+1, over the pages it differs in
    membership: bytes = b""  # in force at index (core/membership.py)


class _Moving(Exception):
    """The WAL did not match the logged position (a restart was under way): read again."""


# ---- making a snapshot -----------------------------------------------------------


def create_snapshot(
    store: PhysicalStore, directory: Path, committed_index: int | None
) -> SnapshotInfo:
    """The data file at the snapshot point (see the module docstring), published in
    ``directory`` through snapshot_files (sha256 sidecar, newest 2 kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    # ".*.tmp": what SnapshotSource removes when a crash cut a creation short.
    raw = directory / f".copy-{os.getpid()}-{time.monotonic_ns()}.tmp"
    try:
        fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise InternalError(f"cannot create a snapshot file in {directory}: {exc}") from None
    try:
        with store._file_lock:
            if store._closed:
                raise InternalError("cannot make a snapshot: the store is closed")
            _copy_file(store._data_fd, fd, os.fstat(store._data_fd).st_size)
            state, logged = _read_consistent(store, committed_index)
        if logged is not None:
            _write(fd, store.page_size, logged)
        if state.undo is not None:
            _write(fd, store.page_size, state.undo)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        return _publish(raw, directory, state.index, state.term, state.membership)
    except OSError as exc:
        raise InternalError(f"cannot write a snapshot in {directory}: {exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        raw.unlink(missing_ok=True)


def _read_consistent(
    store: PhysicalStore, committed_index: int | None
) -> tuple[_State, _Pages | None]:
    """node.db's state and the logged WAL frames it covers, matched: a WAL that does not
    match was being restarted by a writer (after a full checkpoint), so read again."""
    for _ in range(_WAL_READ_ATTEMPTS):
        state = _read_state(store._node_uri, committed_index)
        try:
            return state, _logged_frames(store.wal_path, state.position, store.page_size)
        except _Moving:
            time.sleep(0.01)
    raise InternalError(f"{store.wal_path} does not hold the frames the log says it does")


def _read_state(uri: str, committed_index: int | None) -> _State:
    """One read transaction on a connection of this thread's own (node.db is in WAL
    mode, so it blocks no writer of the loop's)."""
    try:
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error as exc:
        raise InternalError(f"cannot read the node state for a snapshot: {exc}") from None
    try:
        conn.set_busy_timeout(5000)
        conn.execute("BEGIN")
        rows = conn.execute("SELECT key, value FROM replidb_meta").fetchall()
        meta = {str(key): value for key, value in rows}
        for key in ("applying", "rolling_back", "installing"):
            if meta.get(key):
                raise InternalError(f"cannot make a snapshot: an unfinished {key!r} is recorded")
        applied = int(meta.get("applied_index") or 0)
        text = meta.get("wal_position")
        position = WalPosition.decode(str(text)) if text else EMPTY_POSITION
        base, base_term = int(meta.get("snapshot_index") or 0), int(meta.get("snapshot_term") or 0)
        point = applied if committed_index is None else min(committed_index, applied)
        row = conn.execute(
            "SELECT max(idx) FROM replidb_log AS l WHERE idx > ? AND idx <= ? AND kind = ? "
            "AND NOT EXISTS (SELECT 1 FROM replidb_undo AS u WHERE u.idx = l.idx)",
            (point, applied, EntryKind.WRITE),
        ).fetchone()
        point = max(point, base, int(row[0]) if row and row[0] is not None else 0)
        found = conn.execute("SELECT term FROM replidb_log WHERE idx=?", (point,)).fetchone()
        if found:
            term = int(found[0])
        elif point == base:
            term = base_term
        else:
            raise InternalError(f"cannot make a snapshot at {point}: its entry is not logged")
        undo = _undo(conn, point, applied)
        membership = membership_at(conn, point)
        conn.execute("COMMIT")
    except apsw.Error as exc:
        raise InternalError(f"cannot read the node state for a snapshot: {exc}") from None
    finally:
        conn.close()
    return _State(applied, position, point, term, undo, membership)


def _undo(conn: apsw.Connection, point: int, applied: int) -> _Pages | None:
    """The before-images of ``point+1..applied`` combined as a rollback writes them:
    newest first, so each page ends with its image before the oldest entry, and the
    size before it."""
    images: dict[int, bytes] = {}
    db_pages = None
    for idx, pages in conn.execute(
        "SELECT idx, pages FROM replidb_undo WHERE idx > ? AND idx <= ? ORDER BY idx DESC",
        (point, applied),
    ):
        try:
            if not isinstance(pages, bytes):
                raise ValueError(f"pages are {type(pages).__name__}, not bytes")
            record = decode_page_record(pages)
        except ValueError as exc:
            raise InternalError(f"the undo data of entry {idx} is damaged ({exc}); resync")
        images.update(record.pages)
        db_pages = record.db_pages
    return None if db_pages is None else _Pages(db_pages, images)


def _logged_frames(wal_path: Path, position: WalPosition, page_size: int) -> _Pages | None:
    """What the logged WAL frames add to the main file: each page's last image up to
    the last logged commit, and its size; None if the main file holds everything."""
    if not position.offset:
        return None
    try:
        fd = os.open(wal_path, os.O_RDONLY)  # the WAL carries no POSIX locks (wal_reader)
    except FileNotFoundError:
        raise _Moving() from None
    try:
        raw = pread_exact(fd, position.offset, 0)
    finally:
        os.close(fd)
    try:
        header = parse_wal_header(raw[:WAL_HEADER_SIZE])
    except ValueError:
        raise _Moving() from None
    if (header.salt1, header.salt2) != (position.salt1, position.salt2):
        return None  # restarted: a restart follows a complete checkpoint of logged frames
    frames = parse_wal_frames(header, raw[WAL_HEADER_SIZE:])
    if not frames or frames[-1].offset + WAL_FRAME_HEADER_SIZE + page_size != position.offset:
        raise _Moving()
    db_pages = frames[-1].db_size
    images = {frame.pgno: frame.page for frame in frames}
    return _Pages(db_pages, {p: image for p, image in images.items() if p <= db_pages})


def _copy_file(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes by offset (``src``'s file position is never used, so the
    descriptor can be shared with the loop), in the kernel where it can."""
    offset = 0
    copy_range = getattr(os, "copy_file_range", None)
    while copy_range is not None and offset < size:
        try:
            done = copy_range(src, dst, min(size - offset, 1 << 30), offset, offset)
        except OSError:
            break  # not supported here (another filesystem, old kernel): copy by hand
        if done <= 0:
            break
        offset += done
    while offset < size:
        chunk = pread_exact(src, min(_COPY_CHUNK, size - offset), offset)
        if not chunk:
            raise InternalError(f"the data file ended at byte {offset} of {size} while copied")
        _pwrite_all(dst, chunk, offset)
        offset += len(chunk)


def _write(fd: int, page_size: int, state: _Pages) -> None:
    """Write a state over the copy as a checkpoint or rollback would write the file:
    the images of pages within the size, then truncate or extend to it."""
    for pgno in sorted(state.images):
        if pgno <= state.db_pages:
            _pwrite_all(fd, state.images[pgno], (pgno - 1) * page_size)
    os.ftruncate(fd, state.db_pages * page_size)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _publish(raw: Path, directory: Path, index: int, term: int, membership: bytes) -> SnapshotInfo:
    snapshot_id = f"{index}-{term}-{secrets.token_hex(4)}"
    path, sidecar = snapshot_files.snapshot_paths(directory, snapshot_id)
    size = raw.stat().st_size
    sha256 = snapshot_files.file_sha256(raw)
    info = SnapshotInfo(snapshot_id, path, index, term, size, sha256, membership.hex())
    snapshot_files.write_json(sidecar, info.describe())
    os.replace(raw, path)
    snapshot_files.fsync_directory(directory)
    snapshot_files.prune_snapshots(directory)
    return info


# ---- installing one --------------------------------------------------------------


def check_snapshot_file(path: Path, page_size: int, file_format: int) -> None:
    """The version lock (stream/physical.py) for a whole file: ProtocolError, one line,
    unless its header says the SQLite version, page size and file format of this node
    and its size is the whole number of pages the header announces."""
    try:
        with path.open("rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise InternalError(f"cannot read snapshot {path.name}: {exc}") from None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise ProtocolError(f"wal stream: snapshot {path.name} is not an SQLite database")
    written_by = int.from_bytes(header[96:100], "big")
    local = apsw.sqlite_lib_version()
    if _version_text(written_by) != local:
        raise ProtocolError(
            f"wal stream: snapshot {path.name} was written by SQLite "
            f"{_version_text(written_by)} but this node runs {local}; wal shipping needs the "
            "same SQLite version on every node (upgrade through --stream logical)"
        )
    raw_size = int.from_bytes(header[16:18], "big")
    theirs = 65536 if raw_size == 1 else raw_size
    if theirs != page_size:
        raise ProtocolError(
            f"wal stream: snapshot {path.name} has {theirs}-byte pages but this node's "
            f"database uses {page_size}; wal shipping needs identical page sizes "
            "(run the cluster with --stream logical instead)"
        )
    found_format = header[18] * 256 + header[19]
    if found_format != file_format:
        raise ProtocolError(
            f"wal stream: snapshot {path.name} has file format {found_format:#06x} but this "
            f"node's is {file_format:#06x}; wal shipping needs identical formats "
            "(run the cluster with --stream logical instead)"
        )
    pages = int.from_bytes(header[28:32], "big")
    if size % page_size or (header[92:96] == header[24:28] and pages * page_size != size):
        raise ProtocolError(
            f"wal stream: snapshot {path.name} is {size} bytes, not the {pages} pages of "
            f"{page_size} bytes its header announces"
        )


def _version_text(number: int) -> str:
    """SQLITE_VERSION_NUMBER (3054001) as sqlite_lib_version() says it (3.54.1)."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def install_snapshot(
    store: PhysicalStore,
    path: Path,
    index: int,
    term: int,
    committed_index: int,
    membership: bytes = b"",
) -> int:
    """See PhysicalStore.install_snapshot; returns how many writes it described."""
    applied = store.applied_index()
    if index < min(applied, committed_index):
        raise ValueError(
            f"snapshot at {index} is older than the committed state applied here "
            f"({min(applied, committed_index)})"
        )
    prepared = _prepared(store)
    try:
        shutil.copyfile(path, prepared)
        with prepared.open("rb+") as f:
            os.fsync(f.fileno())
        check_snapshot_file(prepared, store.page_size, store.file_format)
        snapshot_files.fsync_directory(store.directory)
    except BaseException as exc:
        prepared.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InternalError(f"cannot prepare snapshot {path.name}: {exc}") from None
        raise
    lost = _lost(store, index, term, committed_index)
    with store._file_lock:
        try:
            _mark(store, f"{index} {term} {prepared.stat().st_size}", lost, membership)
        except BaseException:
            # Once the marker is in, the prepared file is the install: keep it.
            with contextlib.suppress(Exception):
                if not store._meta("installing"):
                    prepared.unlink(missing_ok=True)
            raise
        finish_install(store)
    return len(lost)


def _lost(
    store: PhysicalStore, index: int, term: int, committed_index: int
) -> list[tuple[object, ...]]:
    """Rows for replidb_discarded: the writes applied here above ``committed_index`` that
    the snapshot does not hold. If this log has the snapshot's entry (same term),
    everything up to it is the leader's too. Below the snapshot's index only writes
    that still have undo data can be missing from it (the others committed, and a
    committed write is in every later snapshot); above it, every write is rolled back
    by the install (an older snapshot, e.g. a restored backup). A write with undo data
    is described as it was when written here (describe_record, as SQLiteStore does);
    one without only by its pages, since a page record holds no rows."""
    lo = committed_index + 1
    if term and store.term(index) == term:
        lo = max(lo, index + 1)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    lost: list[tuple[object, ...]] = []
    for idx, entry_term, data, changes in store.node.execute(
        "SELECT l.idx, l.term, l.data, u.changes FROM replidb_log AS l "
        "LEFT JOIN replidb_undo AS u ON u.idx = l.idx "
        "WHERE l.idx BETWEEN ? AND ? AND l.kind = ? AND (u.idx IS NOT NULL OR l.idx > ?) "
        "ORDER BY l.idx",
        (lo, store.applied_index(), EntryKind.WRITE, index),
    ).fetchall():
        if changes is None:
            changes = json.dumps([{"pages": _page_numbers(data)}], separators=(",", ":"))
        lost.append((entry_term, idx, changes, data, now, _LOST_REASON))
    return lost


def _page_numbers(data: object) -> list[int]:
    try:
        if not isinstance(data, bytes):
            raise ValueError(f"the record is {type(data).__name__}, not bytes")
        return [pgno for pgno, _ in decode_page_record(data).pages]
    except ValueError:
        return []  # still kept: the record itself goes into replidb_discarded


def _mark(
    store: PhysicalStore, marker: str, lost: list[tuple[object, ...]], membership: bytes
) -> None:
    """The point of no return: from here the install rolls forward, even after a crash.
    ``marker``: the snapshot's index, term and size. The membership in force at the
    snapshot is recorded now too: the install is certain from here."""
    with store._txn("FULL"):
        store._set_meta("installing", marker)
        if membership:
            store._set_meta("membership", membership)
        store.node.executemany(
            "INSERT INTO replidb_discarded(term, idx, changes, record, discarded_at, reason) "
            "VALUES(?, ?, ?, ?, ?, ?)",
            lost,
        )


def finish_install(store: PhysicalStore) -> None:
    """Roll the marked install forward; every step is idempotent, so the open after a
    crash anywhere in here does it again."""
    index, term, size = (int(part) for part in str(store._meta("installing")).split())
    for conn in (store._reader, store._writer):
        if conn is not None:
            conn.close()  # no checkpoint on close: the old file's content is going
    store._reader = store._writer = None
    store._tail = None
    try:
        _swap(store)
        os.close(store._data_fd)
        store._data_fd = -1
        store._data_fd = os.open(store.data_path, os.O_RDWR)
        installed = os.fstat(store._data_fd).st_size
    except OSError as exc:
        raise InternalError(f"cannot install the snapshot: {exc}") from None
    if installed != size:  # the prepared file vanished before it was renamed
        raise InternalError(
            f"{store.data_path} is not the snapshot being installed ({installed} bytes, "
            f"not {size}); this node needs a resync"
        )
    found = read_header(store._data_fd, store.data_path)
    if found != (store.page_size, store.file_format):
        raise InternalError(f"{store.data_path} changed page size or format during an install")
    _record(store, index, term)


def _swap(store: PhysicalStore) -> None:
    """Put the prepared file in place of data.db; nothing to do if it already is."""
    prepared = _prepared(store)
    if not prepared.exists():
        return  # renamed before a crash: data.db is the snapshot
    for suffix in ("-wal", "-shm"):
        store.data_path.with_name(store.data_path.name + suffix).unlink(missing_ok=True)
    snapshot_files.fsync_directory(store.directory)
    os.replace(prepared, store.data_path)
    snapshot_files.fsync_directory(store.directory)


def _record(store: PhysicalStore, index: int, term: int) -> None:
    """The log now starts after the snapshot; term, vote and replidb_discarded stay."""
    with store._txn("FULL"):
        store.node.execute("DELETE FROM replidb_log")
        store.node.execute("DELETE FROM replidb_undo")
        for key, value in (
            ("applied_index", index),
            ("snapshot_index", index),
            ("snapshot_term", term),
            ("wal_position", EMPTY_POSITION.encode()),
        ):
            store._set_meta(key, value)
        for key in ("applying", "rolling_back", "installing"):
            store._clear_meta(key)
    store._last_index, store._last_term = store._load_last()
    store._floors_pending = False


def recover_install(store: PhysicalStore) -> bool:
    """On open: finish an install that reached its marker, else remove a prepared file
    a crash left before it. True if an install was finished."""
    if store._meta("installing"):
        finish_install(store)
        return True
    with contextlib.suppress(FileNotFoundError):
        _prepared(store).unlink()
    return False


def _prepared(store: PhysicalStore) -> Path:
    return store.data_path.with_name(store.data_path.name + PREPARED_SUFFIX)
