"""The ``logical`` stream, format version 1: one write transaction as a record.

    WriteRecord   {segments: [Segment...], version: 1, schema_version: int}
    Segment       DDL {sql, undo}                  a schema change, replayed as is;
                                                   undo: how to reverse it, or None
                | Changes {changeset, columns,     row changes since the previous DDL
                           update_images}
                | Replay {statements, now_ms,      (statement and mixed formats) the
                          seed, sequences, digest}  client's SQL, re-run on each node
                                                   in the leader's context
    columns       {table: [column name, ...]}      names of the changeset's columns, in
                                                   order; "rowid" first for a table
                                                   keyed by its hidden rowid
    update_images [[value, ...], ...]              with --row-images full: each UPDATE's
                                                   complete after-image, in changeset
                                                   order (a changeset has only the key
                                                   and the changed columns)

A changeset is SQLite's session format (see ``stream/changeset.py``): per change the
table, the operation, which columns form the key, and the before and after images.
``row_changes`` turns a record into named rows — the schema users and change-data
consumers read:

    RowChange {table, op: INSERT|UPDATE|DELETE, key: {col: value},
               before: {col: value} | None, after: {col: value} | None,
               after_complete: bool}
    (an UPDATE's before-image holds the key and the changed columns; its after-image
    too, unless the leader ran with --row-images full: then after_complete is True)

A Replay segment (statement format) carries no rows: ``statements`` [{sql, params}]
run again on every node with 'now' fixed to ``now_ms`` (Unix ms), random() and
randomblob() seeded with ``seed``, and ``sequences`` {table: AUTOINCREMENT counter}
set first; ``digest`` is a hash of the row changes the leader made, so a replica whose
replay changed anything else stops instead of silently diverging.

DDL cuts changes into segments so that ``CREATE TABLE t; INSERT INTO t ...`` replays
in order. Evolution: records are msgpack maps; a reader ignores fields a newer writer
added, and every new field gets a default, so older records still decode. Golden
records of every released version live in tests/golden/ and are decoded by a test
forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from replidb.stream.changeset import UNCHANGED, iter_changeset

__all__ = [
    "DDL",
    "FORMAT_VERSION",
    "Changes",
    "Replay",
    "ReplayStatement",
    "RowChange",
    "Segment",
    "WriteRecord",
    "decode_record",
    "encode_record",
    "row_changes",
]

FORMAT_VERSION = 1


class DDL(msgspec.Struct, frozen=True, tag="ddl", omit_defaults=True):
    sql: str
    # Statements that reverse it, for a node that must roll it back; None: not known
    # to be reversible (then such a node needs a resync).
    undo: list[str] | None = None


class Changes(msgspec.Struct, frozen=True, tag="changes", omit_defaults=True):
    changeset: bytes
    columns: dict[str, list[str]] = {}
    update_images: list[list[Any]] = []


class ReplayStatement(msgspec.Struct, frozen=True, array_like=True):
    sql: str
    params: list[Any] | dict[str, Any] | None = None


class Replay(msgspec.Struct, frozen=True, tag="replay", omit_defaults=True):
    statements: list[ReplayStatement]
    now_ms: int
    seed: int
    sequences: dict[str, int] = {}
    digest: bytes = b""


Segment = DDL | Changes | Replay


class WriteRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    segments: list[Segment]
    version: int = FORMAT_VERSION
    schema_version: int = 0  # the leader's PRAGMA schema_version after this write
    # When the leader committed it (ms since the epoch, its clock; 0: not recorded).
    # Added within version 1: older readers ignore it, older records lack it.
    commit_ms: int = 0


@dataclass(frozen=True)
class RowChange:
    table: str
    op: str
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    after_complete: bool = True


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WriteRecord)


def encode_record(record: WriteRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> WriteRecord:
    """Raises ValueError naming the problem if ``data`` is not a logical record."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a logical write record: {exc}") from None


def row_changes(record: WriteRecord) -> Iterator[RowChange | DDL | Replay]:
    """The record as named row changes, DDL and (statement format) replays, in order."""
    for segment in record.segments:
        if isinstance(segment, DDL | Replay):
            yield segment
            continue
        images = iter(segment.update_images)
        for change in iter_changeset(segment.changeset):
            names = segment.columns.get(change.table) or [f"c{i}" for i in range(len(change.pk))]
            keyed = change.new if change.op == "INSERT" else change.old
            assert keyed is not None
            after = _image(names, change.new)
            complete = change.op != "UPDATE"
            if change.op == "UPDATE" and segment.update_images:
                after, complete = dict(zip(names, next(images), strict=False)), True
            yield RowChange(
                table=change.table,
                op=change.op,
                key={n: v for n, v, k in zip(names, keyed, change.pk, strict=False) if k},
                before=_image(names, change.old),
                after=after,
                after_complete=complete,
            )


def _image(names: list[str], values: tuple[Any, ...] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {n: v for n, v in zip(names, values, strict=False) if v is not UNCHANGED}
