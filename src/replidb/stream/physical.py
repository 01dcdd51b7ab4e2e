"""The ``wal`` stream, format version 1: one write transaction as the database pages it
changed, so a follower's data file is byte-identical to the leader's at the same log
position.

    PageRecord  {sqlite_version: str     SQLite library version that wrote the pages
                 page_size: int          bytes per page (512..65536)
                 file_format: int        database header bytes 18 and 19 (file format
                                         write and read versions) as 256*b18 + b19;
                                         0x0202 for a database in WAL mode
                 db_pages: int           the database size in pages after the
                                         transaction (the commit frame's "DB size")
                 pages: [[pgno, image]]  each changed page once, its last image in the
                                         transaction, ascending page numbers
                 version: 1}

Records are msgpack maps (msgspec). Page images are absolute, so applying a record
twice is harmless: a node that crashed mid-apply simply applies it again. The same
shape also describes undo data (the pages' images *before* a transaction, with
``db_pages`` the size before it).

**Version lock.** Pages are SQLite's private on-disk format. A follower writes them
verbatim into its file, so every node must run the same SQLite version (a newer
library may lay out b-tree pages, the header or the schema differently, or write
header fields an older one rejects), the same page size (an image is one page and its
offset is ``(pgno - 1) * page_size``) and the same file format bytes. A follower checks
all three before it acknowledges an entry and refuses with one line otherwise.

Upgrading SQLite (or apsw) in a cluster therefore goes through the logical stream,
which replicates rows and works across versions:

1. switch the cluster to ``--stream logical`` (restart the nodes with it);
2. upgrade the nodes one by one, each rejoining as a follower;
3. switch back to ``--stream wal`` once every node runs the new version.

This module also parses SQLite's write-ahead log (sqlite.org/fileformat2.html, "The
Write-Ahead Log"), because the leader reads the pages a commit wrote from its
``-wal`` file: a 32-byte header, then frames of a 24-byte header plus one page. A frame
is valid only if its salts equal the header's and the cumulative checksum chain holds;
only frames up to a commit frame (non-zero "DB size") belong to committed
transactions. Pure functions over bytes: the storage layer does the file I/O.
"""

from __future__ import annotations

import struct

import msgspec

__all__ = [
    "FORMAT_VERSION",
    "WAL_FRAME_HEADER_SIZE",
    "WAL_HEADER_SIZE",
    "PageRecord",
    "WalFrame",
    "WalHeader",
    "decode_page_record",
    "encode_page_record",
    "parse_wal_frames",
    "parse_wal_header",
    "wal_checksum",
]

FORMAT_VERSION = 1

WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
_MAGIC_LITTLE = 0x377F0682  # checksums over little-endian words
_MAGIC_BIG = 0x377F0683  # checksums over big-endian words
_MASK = 0xFFFFFFFF


class PageRecord(msgspec.Struct, frozen=True):
    sqlite_version: str
    page_size: int
    file_format: int
    db_pages: int
    pages: list[tuple[int, bytes]]
    version: int = FORMAT_VERSION


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PageRecord)


def encode_page_record(record: PageRecord) -> bytes:
    return _encoder.encode(record)


def decode_page_record(data: bytes) -> PageRecord:
    """Raises ValueError naming the problem if ``data`` is not a valid page record."""
    try:
        record = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a wal page record: {exc}") from None
    if record.version != FORMAT_VERSION:
        raise ValueError(
            f"wal page record version {record.version} is not supported "
            f"(this node reads version {FORMAT_VERSION})"
        )
    size = record.page_size
    if size < 512 or size > 65536 or size & (size - 1):
        raise ValueError(f"wal page record has an invalid page size {size}")
    if record.db_pages < 0:
        raise ValueError(f"wal page record has a negative database size {record.db_pages}")
    seen: set[int] = set()
    for pgno, image in record.pages:
        if pgno < 1 or pgno > record.db_pages:
            raise ValueError(
                f"wal page record has page {pgno} outside the database's {record.db_pages} pages"
            )
        if pgno in seen:
            raise ValueError(f"wal page record has page {pgno} twice")
        if len(image) != size:
            raise ValueError(f"wal page record's page {pgno} is {len(image)} bytes, not {size}")
        seen.add(pgno)
    return record


# ---- the write-ahead log ------------------------------------------------------------


class WalHeader(msgspec.Struct, frozen=True):
    magic: int
    format_version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @property
    def big_endian(self) -> bool:
        return self.magic == _MAGIC_BIG


class WalFrame(msgspec.Struct, frozen=True):
    offset: int  # byte offset of the frame's header in the WAL file
    pgno: int
    db_size: int  # the database size in pages after the commit; 0 unless a commit frame
    page: bytes
    checksum: tuple[int, int]  # the cumulative checksum after this frame

    @property
    def is_commit(self) -> bool:
        return self.db_size != 0


def wal_checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from
    ``(s0, s1)``: over 32-bit words x, ``s0 += x[i] + s1; s1 += x[i+1] + s0`` (mod 2**32)."""
    if len(data) % 8:
        raise ValueError(f"wal checksum input is {len(data)} bytes, not a multiple of 8")
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    it = iter(words)
    for a, b in zip(it, it, strict=True):
        s0 = (s0 + a + s1) & _MASK
        s1 = (s1 + b + s0) & _MASK
    return s0, s1


def parse_wal_header(data: bytes) -> WalHeader:
    """The WAL header from the file's first 32 bytes; ValueError if it is not valid."""
    if len(data) < WAL_HEADER_SIZE:
        raise ValueError(f"wal header is {len(data)} bytes, not {WAL_HEADER_SIZE}")
    fields = struct.unpack(">8I", data[:WAL_HEADER_SIZE])
    header = WalHeader(*fields)
    if header.magic not in (_MAGIC_LITTLE, _MAGIC_BIG):
        raise ValueError(f"wal header has a bad magic number {header.magic:#x}")
    size = header.page_size
    if size < 512 or size > 65536 or size & (size - 1):
        raise ValueError(f"wal header has an invalid page size {size}")
    if wal_checksum(data[:24], header.big_endian) != (header.checksum1, header.checksum2):
        raise ValueError("wal header checksum does not match")
    return header


def parse_wal_frames(
    header: WalHeader,
    data: bytes,
    offset: int = WAL_HEADER_SIZE,
    checksum: tuple[int, int] | None = None,
) -> list[WalFrame]:
    """The committed frames in ``data``, the WAL's bytes from byte ``offset`` on.

    ``checksum`` is the cumulative checksum before the first frame: the header's when
    ``offset`` is 32 (the default), else the previous frame's. Parsing stops at the first
    invalid frame (salts differ from the header's, bad checksum, page number 0, or a
    partial frame); only frames up to and including the last commit frame are returned,
    since later ones belong to no committed transaction.
    """
    frame_size = WAL_FRAME_HEADER_SIZE + header.page_size
    s0, s1 = checksum if checksum is not None else (header.checksum1, header.checksum2)
    frames: list[WalFrame] = []
    committed = 0
    pos = 0
    while pos + frame_size <= len(data):
        pgno, db_size, salt1, salt2, c1, c2 = struct.unpack_from(">6I", data, pos)
        if pgno == 0 or (salt1, salt2) != (header.salt1, header.salt2):
            break
        page = data[pos + WAL_FRAME_HEADER_SIZE : pos + frame_size]
        s0, s1 = wal_checksum(data[pos : pos + 8], header.big_endian, s0, s1)
        s0, s1 = wal_checksum(page, header.big_endian, s0, s1)
        if (s0, s1) != (c1, c2):
            break
        frames.append(WalFrame(offset + pos, pgno, db_size, page, (s0, s1)))
        if db_size:
            committed = len(frames)
        pos += frame_size
    return frames[:committed]
