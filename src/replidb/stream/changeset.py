"""A pure reader of SQLite session changesets (no SQLite needed): table, operation,
primary-key flags, before and after images.

The format is SQLite's own, documented in sqlite3session.h:

    table header:  'T' (0x54), varint column count, one byte per column (1 = part of the
                   primary key), the table name, NUL-terminated
    each change:   op (INSERT 0x12, UPDATE 0x17, DELETE 0x09), indirect flag (1 byte),
                   old record (DELETE, UPDATE), new record (INSERT, UPDATE)
    a record:      per column, a type byte and its value: 0 undefined (UPDATE: column not
                   changed), 1 integer (8 bytes, big-endian), 2 real (8 bytes IEEE),
                   3 text / 4 blob (varint length, bytes), 5 NULL

Varints are SQLite's: big-endian groups of 7 bits, the 9th byte taking all 8.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["UNCHANGED", "ChangesetError", "RawChange", "iter_changeset"]

_OPS = {0x12: "INSERT", 0x17: "UPDATE", 0x09: "DELETE"}


class _Unchanged:
    """In an UPDATE's images: this column was not part of the change."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


class ChangesetError(ValueError):
    """The bytes are not a well-formed changeset."""


@dataclass(frozen=True)
class RawChange:
    table: str
    op: str  # INSERT | UPDATE | DELETE
    pk: tuple[bool, ...]  # per column: part of the primary key
    old: tuple[Any, ...] | None
    new: tuple[Any, ...] | None
    indirect: bool


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ChangesetError("changeset ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise ChangesetError("changeset ends early")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def varint(self) -> int:
        value = 0
        for _ in range(8):
            byte = self.byte()
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                return value
        return (value << 8) | self.byte()

    def record(self, columns: int) -> tuple[Any, ...]:
        values: list[Any] = []
        for _ in range(columns):
            kind = self.byte()
            if kind == 0:
                values.append(UNCHANGED)
            elif kind == 1:
                values.append(struct.unpack(">q", self.take(8))[0])
            elif kind == 2:
                values.append(struct.unpack(">d", self.take(8))[0])
            elif kind == 3:
                values.append(self.take(self.varint()).decode("utf-8"))
            elif kind == 4:
                values.append(bytes(self.take(self.varint())))
            elif kind == 5:
                values.append(None)
            else:
                raise ChangesetError(f"unknown value type {kind}")
        return tuple(values)


def iter_changeset(data: bytes) -> Iterator[RawChange]:
    """Every change in ``data``, in order. ChangesetError on malformed input."""
    reader = _Reader(data)
    table = ""
    pk: tuple[bool, ...] = ()
    while reader.pos < len(data):
        marker = reader.byte()
        if marker == 0x54:  # 'T': a table header
            columns = reader.varint()
            pk = tuple(bool(b) for b in reader.take(columns))
            end = data.find(b"\x00", reader.pos)
            if end < 0:
                raise ChangesetError("table name is not terminated")
            table = data[reader.pos : end].decode("utf-8")
            reader.pos = end + 1
            continue
        op = _OPS.get(marker)
        if op is None or not table:
            raise ChangesetError(f"unexpected byte 0x{marker:02x} at offset {reader.pos - 1}")
        indirect = bool(reader.byte())
        old = reader.record(len(pk)) if op in ("UPDATE", "DELETE") else None
        new = reader.record(len(pk)) if op in ("UPDATE", "INSERT") else None
        yield RawChange(table, op, pk, old, new, indirect)
