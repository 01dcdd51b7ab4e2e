"""Length-prefixed frames: a 4-byte big-endian payload length, then the payload.

A frame longer than ``max_frame`` is refused *before* its payload is read, so a peer
cannot make us allocate what it announces.
"""

from __future__ import annotations

import asyncio
import struct

import msgspec

from replidb.errors import ProtocolError
from replidb.transport import wire

__all__ = ["DEFAULT_MAX_FRAME", "frame", "read_message"]

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


def frame(message: wire.Message) -> bytes:
    payload = wire.encode(message)
    return _HEADER.pack(len(payload)) + payload


async def read_message(
    reader: asyncio.StreamReader, max_frame: int = DEFAULT_MAX_FRAME
) -> wire.Message | None:
    """The next message, or None at a clean end of stream. ProtocolError on bad input."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    (length,) = _HEADER.unpack(header)
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_frame}-byte limit")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    try:
        return wire.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
