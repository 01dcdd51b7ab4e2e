"""The leaderless topology's messages (issue #9), and how its versions travel.

A row's version history is a dotted version vector set (``core.dvv.Clock``) whose
values are ``Version``s: the row as the coordinating replica stored it (None: a
deletion's tombstone), its wall-clock time and that replica's id — the time only
orders siblings for SQL readers and ``lww`` tables, never causality.

Keys are bytes: msgpack of ``[table, [primary key values...]]``, so the ring hashes
the same bytes everywhere and a replica can recover the table and key from them.

Replica requests (``KvGet``, ``KvCoordPut``, ``KvReplicate``) come from a client that
coordinates itself, on its own connection, or from a node coordinating for a client,
over the peer links; both are answered with ``KvReply``. ``KvRequest`` asks a node to
coordinate a whole read or write (``KvResult``). ``KvTree``/``KvTreeDiff``/``KvPush``
are anti-entropy, ``KvPurgeCheck``/``KvPurgeState``/``KvPurge`` tombstone removal.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from replidb.core import dvv
from replidb.errors import BadRequest

__all__ = [
    "TABLE_INFO_SQL",
    "KvCoordPut",
    "KvGet",
    "KvItem",
    "KvPurge",
    "KvPurgeCheck",
    "KvPurgeState",
    "KvPush",
    "KvReplicate",
    "KvReply",
    "KvRequest",
    "KvResult",
    "KvSchema",
    "KvTree",
    "KvTreeDiff",
    "Version",
    "affinity",
    "clock_from_bytes",
    "clock_to_bytes",
    "decode_key",
    "encode_key",
    "key_columns",
    "latest",
    "normalize_key",
    "present_rows",
]


class Version(msgspec.Struct, frozen=True, array_like=True):
    ts: int  # the coordinator's wall clock, ms
    node: str  # the coordinator
    row: dict[str, Any] | None  # None: deleted (a tombstone)
    # The write's id: a write retried on another coordinator (the first one answered
    # too late) is stored twice under two dots; readers see it once.
    wid: str = ""


class _Entry(msgspec.Struct, frozen=True, array_like=True):
    node: str
    counter: int
    values: list[Version]


class _Clock(msgspec.Struct, frozen=True, array_like=True):
    entries: list[_Entry]
    anonymous: list[Version]


_encoder = msgspec.msgpack.Encoder()
_clock_decoder = msgspec.msgpack.Decoder(_Clock)
_key_decoder = msgspec.msgpack.Decoder(tuple[str, list[Any]])


def clock_to_bytes(clock: dvv.Clock) -> bytes:
    return _encoder.encode(
        _Clock(
            [_Entry(e.node, e.counter, list(e.values)) for e in clock.entries],
            list(clock.anonymous),
        )
    )


def clock_from_bytes(data: bytes) -> dvv.Clock:
    raw = _clock_decoder.decode(data)
    return dvv.Clock(
        tuple(dvv.Entry(e.node, e.counter, tuple(e.values)) for e in raw.entries),
        tuple(raw.anonymous),
    )


def latest(versions: list[Version]) -> Version:
    """The version SQL readers and lww tables see: the largest (time, coordinator)."""
    return max(versions, key=lambda v: (v.ts, v.node))


def present_rows(clock: dvv.Clock, lww: bool) -> list[dict[str, Any]]:
    """The rows a key read returns: every live sibling, each write once; in an lww
    table only the latest version, nothing if that is a deletion."""
    versions = [v for v in dvv.values(clock) if isinstance(v, Version)]
    if lww:
        versions = [latest(versions)] if versions else []
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for version in versions:
        if version.row is None or (version.wid and version.wid in seen):
            continue
        seen.add(version.wid)
        rows.append(version.row)
    return rows


_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")


def affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type (its documented rules, in order)."""
    upper = declared.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in upper or not upper:
        return "BLOB"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


TABLE_INFO_SQL = "SELECT name, type, pk FROM pragma_table_info(?) ORDER BY pk"


def key_columns(table: str, info: list[Any]) -> tuple[list[str], list[str]]:
    """(names, affinities) of a table's primary key, in key order, from the rows of
    TABLE_INFO_SQL; BadRequest if the table is unknown or has no primary key."""
    if not info:
        raise BadRequest(f"no such table: {table}")
    key = [(str(name), affinity(str(kind or ""))) for name, kind, pk in info if pk]
    if not key:
        raise BadRequest(f"table {table} has no PRIMARY KEY: leaderless rows are addressed by key")
    return [n for n, _ in key], [a for _, a in key]


def _numeric(text: str) -> int | float | None:
    """Text SQLite would store as a number in a NUMERIC/INTEGER column, as that
    number (integral values within 64 bits as int), else None."""
    text = text.strip()
    if len(text) > 64:
        return None
    if _INT_TEXT.match(text):
        number = int(text)
        return number if -(2**63) <= number < 2**63 else None
    try:
        value = float(text)
    except ValueError:
        return None
    return _integral(value) if math.isfinite(value) else None


def _integral(value: float) -> int | float:
    if value.is_integer() and -(2**63) <= value < 2**63:
        return int(value)
    return value


def normalize_key(values: list[Any], affinities: list[str]) -> list[Any]:
    """Key values as SQLite would store them in columns of these affinities, so that
    1, "1", "1.0" and 1.0 in an INTEGER key are one key everywhere (ring, clocks,
    rows). BadRequest for a value no key can hold."""
    out = []
    for value, kind in zip(values, affinities, strict=True):
        if not isinstance(value, int | float | str | bytes) or isinstance(value, bool):
            raise BadRequest(f"a key value is int, float, str or bytes, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"a key value cannot be {value!r}")
        if kind in ("INTEGER", "NUMERIC"):
            if isinstance(value, str):
                number = _numeric(value)
                value = value if number is None else number
            elif isinstance(value, float):
                value = _integral(value)
        elif kind == "REAL":
            if isinstance(value, str):
                number = _numeric(value)
                value = value if number is None else float(number)
            elif isinstance(value, int):
                value = float(value)
        elif kind == "TEXT" and isinstance(value, int | float):
            value = str(value)
        out.append(value)
    return out


def encode_key(table: str, pk: list[Any]) -> bytes:
    return _encoder.encode([table, pk])


def decode_key(key: bytes) -> tuple[str, list[Any]]:
    return _key_decoder.decode(key)


class KvGet(msgspec.Struct, frozen=True, tag="kv_get"):
    op: int
    key: bytes


class KvCoordPut(msgspec.Struct, frozen=True, tag="kv_coord_put"):
    """Coordinate a client's write: stamp a new dot after ``context``."""

    op: int
    key: bytes
    context: list[tuple[str, int]]
    row: dict[str, Any] | None  # None: delete
    use_current: bool = False  # no context given: supersede what the coordinator holds
    wid: str = ""  # the write's id (Version.wid)


class KvReplicate(msgspec.Struct, frozen=True, tag="kv_replicate"):
    """Keep this clock (merged with yours); with ``hint_for``, hold it for that
    replica, which did not answer, and hand it over when it can be reached."""

    op: int
    key: bytes
    clock: bytes  # clock_to_bytes
    hint_for: str = ""
    handoff: bool = False  # a hint handed over by the node that held it


class KvReply(msgspec.Struct, frozen=True, tag="kv_reply"):
    op: int
    sender: str
    key: bytes
    clock: bytes = b""  # the replica's clock for the key after the request
    error: str = ""  # the request failed here (e.g. no such table yet)
    error_kind: str = ""  # its errors.py kind (bad_request: the client's fault)


class KvRequest(msgspec.Struct, frozen=True, tag="kv_request"):
    """Ask a node to coordinate one read or write for a client that does not."""

    id: int
    kind: str  # get | put | delete
    table: str
    key: list[Any] = []  # primary key values (put: taken from ``row``)
    row: dict[str, Any] | None = None
    context: list[tuple[str, int]] = []
    has_context: bool = False  # False: supersede what the coordinator holds
    r: int = 0  # 0: the cluster's default
    w: int = 0
    sloppy: bool = False


class KvResult(msgspec.Struct, frozen=True, tag="kv_result"):
    id: int
    rows: list[dict[str, Any]] = []  # the live siblings (get)
    context: list[tuple[str, int]] = []
    error_kind: str | None = None
    error: str | None = None


class KvItem(msgspec.Struct, frozen=True, array_like=True):
    key: bytes
    clock: bytes


class KvTree(msgspec.Struct, frozen=True, tag="kv_tree"):
    """Anti-entropy: the Merkle leaves of the keys both sender and receiver hold."""

    op: int
    sender: str
    depth: int
    leaves: list[bytes]
    schema: list[str] = []  # the sender's DDL, in the order it ran it


class KvTreeDiff(msgspec.Struct, frozen=True, tag="kv_tree_diff"):
    """The buckets that differ, with the receiver's rows in them."""

    op: int
    sender: str
    buckets: list[int]
    items: list[KvItem]
    schema: list[str] = []


class KvPush(msgspec.Struct, frozen=True, tag="kv_push"):
    """The initiator's rows in the differing buckets, to merge."""

    op: int
    sender: str
    items: list[KvItem]


class KvPurgeCheck(msgspec.Struct, frozen=True, tag="kv_purge_check"):
    op: int
    sender: str
    keys: list[bytes]


class KvPurgeState(msgspec.Struct, frozen=True, tag="kv_purge_state"):
    """Per key asked: the replica's clock (b"" if none), the clock of its purged
    tombstone if it purged the key lately (b"" if not), and whether it holds a hint."""

    op: int
    sender: str
    clocks: list[bytes]
    hinted: list[bool]
    purged: list[bytes] = []


class KvPurge(msgspec.Struct, frozen=True, tag="kv_purge"):
    """Forget these tombstones, if the clock is still exactly this one."""

    op: int
    sender: str
    items: list[KvItem]


class KvSchema(msgspec.Struct, frozen=True, tag="kv_schema"):
    """A node's DDL, in the order it ran it: run what you lack (answered by KvReply)."""

    op: int
    sender: str
    schema: list[str]
