"""Reading this node's ``data.db-wal`` for WAL shipping: the frames a commit just wrote,
the before-images of the pages it changed, and dropping commits that never reached the
log.

The leader ships each commit as the page images in its WAL frames. ``WalTail`` follows
the WAL from the last shipped commit: where it ends, its running checksum, and for each
page its latest frame (a page's image before the next commit is that frame, or the page
in the main file if no frame holds it). After a checkpoint the WAL restarts from its
beginning with new salts; ``read_commit`` notices and follows.

The WAL file itself carries no POSIX locks (SQLite locks the database file and the
``-shm`` file), so it is safe to open and close it here while SQLite has it open. The
main file is read only through the caller's long-lived descriptor: closing any other
descriptor on it would drop SQLite's locks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from replidb.errors import InternalError
from replidb.stream.physical import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    WalFrame,
    WalHeader,
    parse_wal_frames,
    parse_wal_header,
)

__all__ = ["EMPTY_POSITION", "Commit", "WalPosition", "WalTail", "drop_unlogged", "pread_exact"]


@dataclass(frozen=True)
class WalPosition:
    """How far the log covers the WAL: the WAL generation (its salts) and the byte
    offset just past the last logged commit frame. Offset 0: nothing logged in it."""

    salt1: int
    salt2: int
    offset: int

    def encode(self) -> str:
        return f"{self.salt1} {self.salt2} {self.offset}"

    @classmethod
    def decode(cls, text: str) -> WalPosition:
        salt1, salt2, offset = (int(part) for part in text.split())
        return cls(salt1, salt2, offset)


EMPTY_POSITION = WalPosition(0, 0, 0)


@dataclass(frozen=True)
class Commit:
    """The frames of one commit (or several) read from the WAL, not yet shipped."""

    header: WalHeader
    frames: list[WalFrame]
    restarted: bool  # the WAL began a new generation: every older frame is checkpointed
    end: int  # byte offset just past the last frame

    @property
    def db_pages(self) -> int:
        return self.frames[-1].db_size


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``, or fewer only at the end of the file."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


@dataclass
class WalTail:
    wal_path: Path
    data_fd: int  # the caller's descriptor on the main file; never closed here
    page_size: int
    db_pages: int  # the database size after the last shipped commit
    header: WalHeader | None = None  # None: the WAL is empty
    offset: int = 0
    checksum: tuple[int, int] = (0, 0)
    latest: dict[int, int] = field(default_factory=dict)  # pgno -> offset of its last frame

    @property
    def frame_size(self) -> int:
        return WAL_FRAME_HEADER_SIZE + self.page_size

    @property
    def frames(self) -> int:
        return max(0, (self.offset - WAL_HEADER_SIZE) // self.frame_size)

    @property
    def position(self) -> WalPosition:
        if self.header is None:
            return EMPTY_POSITION
        return WalPosition(self.header.salt1, self.header.salt2, self.offset)

    @classmethod
    def load(cls, wal_path: Path, data_fd: int, page_size: int) -> WalTail:
        """Follow the WAL as it is on disk (all of it must already be logged)."""
        tail = cls(wal_path, data_fd, page_size, os.fstat(data_fd).st_size // page_size)
        raw = _read_file(wal_path)
        if len(raw) < WAL_HEADER_SIZE:
            return tail
        try:
            header = parse_wal_header(raw[:WAL_HEADER_SIZE])
        except ValueError:
            return tail  # SQLite ignores a WAL without a valid header too
        if header.page_size != page_size:
            raise InternalError(
                f"{wal_path} has {header.page_size}-byte pages, the database {page_size}"
            )
        frames = parse_wal_frames(header, raw[WAL_HEADER_SIZE:])
        tail.header = header
        tail.offset = WAL_HEADER_SIZE + len(frames) * tail.frame_size
        tail.checksum = frames[-1].checksum if frames else (header.checksum1, header.checksum2)
        for frame in frames:
            tail.latest[frame.pgno] = frame.offset
        if frames:
            tail.db_pages = frames[-1].db_size
        return tail

    def reset(self) -> None:
        """The WAL was checkpointed and truncated: the main file holds everything."""
        self.header, self.offset, self.checksum = None, 0, (0, 0)
        self.latest = {}

    def read_commit(self, nframes: int) -> Commit:
        """The frames after the last shipped commit, up to frame ``nframes`` (the WAL
        hook's count, which SQLite reports just after the commit)."""
        fd = os.open(self.wal_path, os.O_RDONLY)
        try:
            try:
                header = parse_wal_header(pread_exact(fd, WAL_HEADER_SIZE, 0))
            except ValueError as exc:
                raise InternalError(f"{self.wal_path}: {exc}") from None
            restarted = self.header is None or (header.salt1, header.salt2) != (
                self.header.salt1,
                self.header.salt2,
            )
            start, checksum = (
                (WAL_HEADER_SIZE, (header.checksum1, header.checksum2))
                if restarted
                else (self.offset, self.checksum)
            )
            end = WAL_HEADER_SIZE + nframes * self.frame_size
            data = pread_exact(fd, end - start, start) if end > start else b""
        finally:
            os.close(fd)
        frames = parse_wal_frames(header, data, start, checksum)
        if not frames or frames[-1].offset + self.frame_size != end:
            got = len(frames)
            raise InternalError(
                f"{self.wal_path}: expected {(end - start) // self.frame_size} committed "
                f"frames from byte {start}, found {got} valid"
            )
        return Commit(header, frames, restarted, end)

    def pages(self, commit: Commit) -> list[tuple[int, bytes]]:
        """Each page the commit wrote, once, its last image, ascending; frames for pages
        beyond the final size are dropped, as a checkpoint would."""
        last = {frame.pgno: frame.page for frame in commit.frames}
        return [(pgno, last[pgno]) for pgno in sorted(last) if pgno <= commit.db_pages]

    def before_images(self, commit: Commit) -> list[tuple[int, bytes]]:
        """The images, before the commit, of every page it changed or cut off. Pages it
        added need none: truncating to the old size removes them."""
        before = self.db_pages
        changed = {frame.pgno for frame in commit.frames if frame.pgno <= before}
        changed.update(range(commit.db_pages + 1, before + 1))  # a shrink cuts these
        latest = {} if commit.restarted else self.latest
        images: list[tuple[int, bytes]] = []
        fd = os.open(self.wal_path, os.O_RDONLY)
        try:
            for pgno in sorted(changed):
                offset = latest.get(pgno)
                if offset is not None:
                    image = pread_exact(fd, self.page_size, offset + WAL_FRAME_HEADER_SIZE)
                else:
                    image = pread_exact(self.data_fd, self.page_size, (pgno - 1) * self.page_size)
                if len(image) != self.page_size:
                    raise InternalError(f"cannot read the image of page {pgno} before a commit")
                images.append((pgno, image))
        finally:
            os.close(fd)
        return images

    def advance(self, commit: Commit) -> None:
        """The commit is in the log: follow the WAL past it."""
        if commit.restarted:
            self.latest = {}
        self.header = commit.header
        for frame in commit.frames:
            self.latest[frame.pgno] = frame.offset
        self.offset = commit.end
        self.checksum = commit.frames[-1].checksum
        self.db_pages = commit.db_pages


def drop_unlogged(wal_path: Path, logged: WalPosition, page_size: int) -> int:
    """Cut the WAL back to what the log covers; returns how many committed frames were
    dropped. Call only while no connection has the database open.

    A WAL in another generation than the logged one restarted after the last logged
    commit (a restart needs a complete checkpoint, which only ever covers logged frames),
    so all of it is unlogged."""
    raw = _read_file(wal_path)
    if not raw:
        return 0
    try:
        header = parse_wal_header(raw[:WAL_HEADER_SIZE])
        frames = parse_wal_frames(header, raw[WAL_HEADER_SIZE:])
    except ValueError:
        header, frames = None, []
    keep = 0
    if (
        header is not None
        and logged.offset
        and (header.salt1, header.salt2) == (logged.salt1, logged.salt2)
    ):
        keep = logged.offset
        valid_end = WAL_HEADER_SIZE + len(frames) * (WAL_FRAME_HEADER_SIZE + page_size)
        if valid_end < keep:
            raise InternalError(
                f"{wal_path} has valid frames up to byte {valid_end} but the log covers "
                f"{keep}: logged commits were lost; this node needs a resync"
            )
    dropped = sum(1 for frame in frames if frame.offset >= keep)
    if len(raw) > keep:
        fd = os.open(wal_path, os.O_RDWR)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
    return dropped
