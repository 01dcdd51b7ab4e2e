"""Moving a snapshot from the leader to a follower that needs entries the leader has
compacted away: in checked chunks, over the client port, resumable after a crash.

Why chunks and not one stream: a database may be large and links fail. Each chunk is a
request (``SnapshotFetch``: snapshot id and offset) and a reply (``SnapshotChunk``:
the bytes with their crc32, plus the whole file's size and sha256), so the follower
writes each chunk where it belongs, fsyncs it, then records how far it got in a sidecar
(``snapshot.partial.json``, replaced by rename). After a crash or a lost connection a
new fetch resumes from that offset with the same snapshot id; only if the leader no
longer has that snapshot does it start over, from byte 0 of the leader's current one.
The sha256 of the whole file is checked at the end, since the chunk checksums cannot
see a chunk written at the wrong place or a resume from a file that changed.

A few requests are kept in flight (``window``) so a distant follower is not limited to
one chunk per round trip; replies are written strictly in order.

The leader makes a snapshot only when asked and it has none fresh enough, one at a
time, in a worker thread (storage/sqlite_store.py ``create_snapshot``): its own
connections keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from replidb.errors import Error, ProtocolError, Unavailable
from replidb.storage import snapshot_files
from replidb.storage.snapshot_files import SnapshotInfo
from replidb.transport import wire
from replidb.transport.framing import DEFAULT_MAX_FRAME, frame, read_message
from replidb.transport.peer import split_address

__all__ = [
    "CHUNK_DELAY_ENV",
    "CHUNK_SIZE",
    "SnapshotFetcher",
    "SnapshotSource",
    "SnapshotStore",
    "answer",
]

CHUNK_SIZE = 1 << 20
# Fault injection for tests: sleep this many ms before writing each fetched chunk.
CHUNK_DELAY_ENV = "REPLIDB_DEBUG_SNAPSHOT_CHUNK_DELAY_MS"
_PARTIAL = "snapshot.partial"
_MB = 1e6


class SnapshotStore(Protocol):
    """What the leader's side needs from a store."""

    def applied_index(self) -> int: ...
    def first_index(self) -> int: ...
    def create_snapshot(
        self, directory: Path, committed_index: int | None = None
    ) -> SnapshotInfo: ...


# ---- the leader's side -----------------------------------------------------------


class SnapshotSource:
    """Serves chunks of this node's current snapshot, making one when needed.

    ``max_age_entries``: a new fetch gets a fresh snapshot once the current one is that
    many entries behind the applied index. ``committed_index``: the node's commit index;
    a snapshot is taken no further than it. ``in_use_index`` tells the node not to
    compact past a snapshot followers are still fetching (they continue from its index).
    """

    def __init__(
        self,
        store: SnapshotStore,
        directory: Path,
        log: logging.Logger,
        *,
        max_age_entries: int = 10_000,
        chunk_size: int = CHUNK_SIZE,
        committed_index: Callable[[], int] | None = None,
        in_use_s: float = 60.0,
    ) -> None:
        if not 0 < chunk_size <= DEFAULT_MAX_FRAME - 4096:
            raise ValueError(f"chunk size {chunk_size} must be positive and fit in a frame")
        self.store = store
        self.directory = directory
        self.log = log
        self.max_age_entries = max_age_entries
        self.chunk_size = chunk_size
        self._committed_index = committed_index
        self._in_use_s = in_use_s
        self.current: SnapshotInfo | None = None
        self.bytes_sent = 0
        self.created = 0  # snapshots made by this process
        self._creating: asyncio.Task[SnapshotInfo] | None = None
        self._scanned = False
        self._last_served = -math.inf

    @property
    def in_use_index(self) -> int | None:
        """The index of the snapshot served within the last ``in_use_s`` seconds."""
        if self.current is None or time.monotonic() - self._last_served > self._in_use_s:
            return None
        return self.current.index

    async def settle(self) -> None:
        """Wait for a snapshot being made to be done (its connection reads the database,
        which an install on this node must not replace meanwhile)."""
        if self._creating is not None:
            await asyncio.wait([self._creating])

    async def serve(self, fetch: wire.SnapshotFetch) -> wire.SnapshotChunk:
        try:
            info = self._usable(self.current)
            if fetch.snapshot_id and info is not None and info.snapshot_id == fetch.snapshot_id:
                offset = fetch.offset
            else:
                if fetch.snapshot_id:
                    self.log.info(
                        "%s asked for snapshot %s, which is gone: sending the current one",
                        fetch.node,
                        fetch.snapshot_id,
                    )
                info = await self._fresh(fetch.min_index)
                offset = 0
            if not 0 <= offset <= info.size:
                raise ProtocolError(f"offset {offset} is outside snapshot {info.snapshot_id}")
            data = await asyncio.to_thread(_read_chunk, info.path, offset, self.chunk_size)
        except Error as exc:
            return wire.SnapshotChunk(fetch.id, error=exc.message)
        except OSError as exc:
            return wire.SnapshotChunk(fetch.id, error=f"cannot read the snapshot: {exc}")
        except Exception as exc:  # a bug: answer, log it, keep serving
            self.log.exception("internal error serving a snapshot")
            return wire.SnapshotChunk(fetch.id, error=f"internal error: {exc}")
        self.bytes_sent += len(data)
        self._last_served = time.monotonic()
        return wire.SnapshotChunk(
            fetch.id,
            snapshot_id=info.snapshot_id,
            index=info.index,
            term=info.term,
            total=info.size,
            sha256=info.sha256,
            offset=offset,
            data=data,
            crc32=zlib.crc32(data),
            membership=info.membership,
        )

    def _usable(self, info: SnapshotInfo | None) -> SnapshotInfo | None:
        """``info`` if its file is there and the log still continues from its index."""
        if info is None or not info.path.exists():
            return None
        return info if info.index >= self.store.first_index() - 1 else None

    async def _fresh(self, min_index: int = 0) -> SnapshotInfo:
        if not self._scanned:
            self._scanned = True
            self.directory.mkdir(parents=True, exist_ok=True)
            for leftover in self.directory.glob(".*.tmp"):  # a creation a crash cut short
                leftover.unlink(missing_ok=True)
            self.current = snapshot_files.latest_snapshot(self.directory)
        # Never more than is committed and applied: a snapshot is taken no further, so
        # asking for more would make a new one on every fetch.
        floor = min(min_index, self.store.applied_index())
        if self._committed_index is not None:
            floor = min(floor, self._committed_index())
        info = self._usable(self.current)
        fresh = info is not None and self.store.applied_index() - info.index <= self.max_age_entries
        if info is not None and fresh and info.index >= floor:
            return info
        while True:
            if self._creating is None or self._creating.done():
                self._creating = asyncio.get_running_loop().create_task(self._create())
                self._creating.add_done_callback(self._created)
            info = await asyncio.shield(self._creating)
            if info.index >= floor:  # else it was begun before ``floor`` committed
                return info

    async def _create(self) -> SnapshotInfo:
        committed = self._committed_index() if self._committed_index is not None else None
        started = time.monotonic()
        info = await asyncio.to_thread(self.store.create_snapshot, self.directory, committed)
        self.current = info
        self.created += 1
        self.log.info(
            "made snapshot %s at index %d: %.1f MB in %.2fs",
            info.snapshot_id,
            info.index,
            info.size / _MB,
            time.monotonic() - started,
        )
        return info

    def _created(self, task: asyncio.Task[SnapshotInfo]) -> None:
        self._creating = None
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("cannot make a snapshot: %s", task.exception())


def _read_chunk(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


async def answer(
    source: SnapshotSource, fetch: wire.SnapshotFetch, writer: asyncio.StreamWriter
) -> None:
    """Serve one fetch that arrived on a client connection and write the reply back."""
    chunk = await source.serve(fetch)
    if not writer.is_closing():
        writer.write(frame(chunk))
        with contextlib.suppress(ConnectionError):
            await writer.drain()


# ---- the follower's side ---------------------------------------------------------


@dataclass
class _Target:
    """The snapshot being fetched, as the sidecar records it."""

    snapshot_id: str
    index: int
    term: int
    total: int
    sha256: str
    offset: int = 0  # bytes written and fsynced
    membership: str = ""  # hex, as in SnapshotInfo

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "index": self.index,
            "term": self.term,
            "total": self.total,
            "sha256": self.sha256,
            "offset": self.offset,
            "membership": self.membership,
        }


class SnapshotFetcher:
    """Fetches the leader's snapshot into ``directory``; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        directory: Path,
        log: logging.Logger,
        chunk_timeout_s: float = 10.0,
        *,
        window: int = 4,
        min_index: int = 0,
    ) -> None:
        self.node_id = node_id
        self.directory = directory
        self.log = log
        self.chunk_timeout_s = chunk_timeout_s
        self.window = max(1, window)
        self.min_index = min_index  # no snapshot older than this (wire.SnapshotFetch)
        self.bytes_received = 0  # by this process, across fetches
        self.resumed_from = 0  # the offset the last fetch resumed at (0: from the start)
        self._target: _Target | None = None
        self._writing: asyncio.Future[None] | None = None
        self._ids = itertools.count(1)
        self._partial = directory / _PARTIAL
        self._sidecar = directory / f"{_PARTIAL}.json"

    @property
    def progress(self) -> str:
        """e.g. ``12.5 of 40.0 MB (31%)``; empty when no fetch is under way."""
        target = self._target
        if target is None:
            return ""
        percent = 100 * target.offset // target.total if target.total else 100
        return f"{target.offset / _MB:.1f} of {target.total / _MB:.1f} MB ({percent}%)"

    async def fetch(self, address: str) -> SnapshotInfo:
        """The leader's snapshot, complete and verified; Unavailable if the leader
        cannot be reached or the transfer fails (call again: it resumes)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            host, port = split_address(address)
        except ValueError as exc:
            raise Unavailable(str(exc)) from None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self.chunk_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"{address}: cannot connect for a snapshot: {_say(exc)}") from None
        fd = os.open(self._partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            return await self._transfer(address, reader, writer, fd)
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise Unavailable(f"{address}: snapshot transfer failed: {_say(exc)}") from None
        finally:
            self._target = None
            if self._writing is not None and not self._writing.done():
                # Cancelled while a worker thread writes: let it finish before the
                # descriptor is closed (and its number possibly reused).
                with contextlib.suppress(BaseException):
                    await asyncio.shield(self._writing)
            self._writing = None
            os.close(fd)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _transfer(
        self,
        address: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fd: int,
    ) -> SnapshotInfo:
        saved = self._load_saved(fd)
        target: _Target | None = None
        pending: dict[int, int] = {}  # request id -> offset asked for
        buffered: dict[int, wire.SnapshotChunk] = {}  # offset -> chunk, until written
        step = 0  # the leader's chunk size, learned from its first full chunk
        next_offset = 0
        started = time.monotonic()
        reported = 0

        def ask(snapshot_id: str, offset: int) -> None:
            request_id = next(self._ids)
            pending[request_id] = offset
            fetch = wire.SnapshotFetch(
                request_id, self.node_id, snapshot_id, offset, min_index=self.min_index
            )
            writer.write(frame(fetch))

        ask(saved.snapshot_id if saved else "", saved.offset if saved else 0)
        while target is None or target.offset < target.total:
            await writer.drain()
            message = await asyncio.wait_for(read_message(reader), self.chunk_timeout_s)
            if message is None:
                raise ConnectionResetError("the leader closed the connection")
            if not isinstance(message, wire.SnapshotChunk):
                raise ProtocolError(f"expected a snapshot chunk, got {type(message).__name__}")
            asked = pending.pop(message.id, None)
            if asked is None:
                continue  # asked before a restart: stale
            if message.error is not None:
                raise Unavailable(f"{address}: {message.error}")
            if target is None or message.snapshot_id != target.snapshot_id:
                previous = target or saved
                if target is None and saved and message.snapshot_id == saved.snapshot_id:
                    target = saved  # the leader resumes the snapshot we had begun
                else:
                    target = _Target(
                        message.snapshot_id,
                        message.index,
                        message.term,
                        message.total,
                        message.sha256,
                        membership=message.membership,
                    )
                    os.ftruncate(fd, 0)
                    if previous is not None:
                        self.log.info(
                            "the leader no longer has snapshot %s: starting over with %s",
                            previous.snapshot_id,
                            target.snapshot_id,
                        )
                saved = None
                pending.clear()
                buffered.clear()
                self._target = target
                self.resumed_from = target.offset
                self.log.info(
                    "fetching snapshot %s at index %d from %s: %d bytes, resuming at byte %d",
                    target.snapshot_id,
                    target.index,
                    address,
                    target.total,
                    target.offset,
                )
                asked = target.offset
                step = 0
                reported = target.offset
                started = time.monotonic()
            _check(message, target, asked)
            self.bytes_received += len(message.data)
            end = message.offset + len(message.data)
            if step == 0:
                step = len(message.data)
                next_offset = end
            elif len(message.data) != step and end != target.total:
                raise ProtocolError("the leader changed its chunk size")
            buffered[message.offset] = message
            while (chunk := buffered.pop(target.offset, None)) is not None:
                target.offset += len(chunk.data)
                state = target.as_json()
                self._writing = asyncio.ensure_future(
                    asyncio.to_thread(self._write, fd, chunk.offset, chunk.data, state)
                )
                await asyncio.shield(self._writing)
                if target.total and (target.offset - reported) * 10 >= target.total:
                    reported = target.offset
                    self.log.info("snapshot %s: %s", target.snapshot_id, self.progress)
            while step and len(pending) < self.window and next_offset < target.total:
                ask(target.snapshot_id, next_offset)
                next_offset += step
        return await self._complete(target, started)

    def _write(self, fd: int, offset: int, data: bytes, state: dict[str, Any]) -> None:
        if CHUNK_DELAY_ENV in os.environ:  # fault injection: a slow link, to kill mid-way
            time.sleep(float(os.environ[CHUNK_DELAY_ENV]) / 1000)
        os.pwrite(fd, data, offset)
        os.fsync(fd)
        snapshot_files.write_json(self._sidecar, state, sync_directory=False)

    def _load_saved(self, fd: int) -> _Target | None:
        """The interrupted fetch to resume, if the partial file still holds its bytes."""
        try:
            target = _Target(**json.loads(self._sidecar.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not 0 <= target.offset <= os.fstat(fd).st_size or not target.snapshot_id:
            return None
        os.ftruncate(fd, target.offset)  # bytes past the record may not be durable
        return target

    async def _complete(self, target: _Target, started: float) -> SnapshotInfo:
        sha256 = await asyncio.to_thread(snapshot_files.file_sha256, self._partial)
        if sha256 != target.sha256:
            self._discard()
            raise Unavailable(
                f"snapshot {target.snapshot_id} failed its sha256 check: discarded, fetch again"
            )
        path, sidecar = snapshot_files.snapshot_paths(self.directory, target.snapshot_id)
        info = SnapshotInfo(
            target.snapshot_id,
            path,
            target.index,
            target.term,
            target.total,
            sha256,
            target.membership,
        )
        snapshot_files.write_json(sidecar, info.describe())
        os.replace(self._partial, path)
        self._sidecar.unlink(missing_ok=True)
        snapshot_files.fsync_directory(self.directory)
        snapshot_files.prune_snapshots(self.directory)
        elapsed = max(time.monotonic() - started, 1e-9)
        fetched = target.total - self.resumed_from
        self.log.info(
            "fetched snapshot %s at index %d: %.1f MB, %d bytes of it in this run "
            "(from byte %d) in %.2fs (%.1f MB/s)",
            target.snapshot_id,
            target.index,
            target.total / _MB,
            fetched,
            self.resumed_from,
            elapsed,
            fetched / _MB / elapsed,
        )
        return info

    def _discard(self) -> None:
        for path in (self._partial, self._sidecar):
            path.unlink(missing_ok=True)


def _check(chunk: wire.SnapshotChunk, target: _Target, offset: int) -> None:
    """Refuse a chunk that is not the asked-for part of the target, or is damaged."""
    described = (chunk.index, chunk.term, chunk.total, chunk.sha256)
    if described != (target.index, target.term, target.total, target.sha256):
        raise ProtocolError(f"snapshot {target.snapshot_id} changed its description")
    if chunk.offset != offset:
        raise ProtocolError(f"asked for byte {offset}, got byte {chunk.offset}")
    if not chunk.data and offset < target.total:
        raise ProtocolError(f"empty chunk at byte {offset} of {target.total}")
    if offset + len(chunk.data) > target.total:
        raise ProtocolError(f"chunk at byte {offset} runs past the end")
    if zlib.crc32(chunk.data) != chunk.crc32:
        raise ProtocolError(f"chunk at byte {offset} failed its crc32 check: refused")


def _say(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
