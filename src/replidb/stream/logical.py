"""The ``logical`` stream: one write transaction as an ordered list of segments.

A segment is either DDL (statement text, replayed as is) or row changes (an SQLite
session changeset: table, operation, primary key, before and after images). DDL cuts
the changes into segments so that ``CREATE TABLE t; INSERT INTO t ...`` replays in
order. The record is versioned; readers ignore fields added by newer writers
(msgspec skips unknown fields), and new fields always get defaults.
"""

from __future__ import annotations

import msgspec

__all__ = ["DDL", "FORMAT_VERSION", "Changes", "WriteRecord", "decode_record", "encode_record"]

FORMAT_VERSION = 1


class DDL(msgspec.Struct, frozen=True, tag="ddl"):
    sql: str


class Changes(msgspec.Struct, frozen=True, tag="changes"):
    changeset: bytes


Segment = DDL | Changes


class WriteRecord(msgspec.Struct, frozen=True):
    segments: list[Segment]
    version: int = FORMAT_VERSION


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WriteRecord)


def encode_record(record: WriteRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> WriteRecord:
    """Raises ValueError naming the problem if ``data`` is not a logical record."""
    try:
        record = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a logical write record: {exc}") from None
    return record
