"""Frames and peer links over real loopback sockets."""

from __future__ import annotations

import asyncio
import struct

import pytest

from replidb.core.messages import Append, Entry
from replidb.errors import ProtocolError
from replidb.transport import wire
from replidb.transport.framing import frame, read_message
from replidb.transport.peer import PeerLink, split_address


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_frames_round_trip_every_message_kind() -> None:
    messages: list[wire.Message] = [
        wire.Hello("n1"),
        wire.Execute(1, [wire.Statement("SELECT ?", [b"\x00", 1.5, None])], "c", 3),
        Append(2, "n1", 4, 1, (Entry(2, 5, 1, b"data"),), 4),
        wire.StatusRequest(9),
    ]

    async def run() -> list[wire.Message | None]:
        reader = _reader(b"".join(frame(m) for m in messages))
        return [await read_message(reader) for _ in range(len(messages) + 1)]

    assert asyncio.run(run()) == [*messages, None]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack(">I", 1 << 30), "exceeds the 1024-byte limit"),
        (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "undecodable frame"),
        (struct.pack(">I", 10) + b"short", "closed inside a frame"),
        (b"\x00\x00", "closed inside a frame header"),
    ],
)
def test_bad_frames_are_protocol_errors(data: bytes, message: str) -> None:
    async def run() -> None:
        await read_message(_reader(data), max_frame=1024)

    with pytest.raises(ProtocolError, match=message):
        asyncio.run(run())


def test_split_address_names_the_problem() -> None:
    assert split_address("127.0.0.1:7101") == ("127.0.0.1", 7101)
    for bad in ("nohost", ":80", "h:0", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="bad address"):
            split_address(bad)


def test_a_dead_peer_costs_bounded_memory() -> None:
    """Messages for an unreachable peer are dropped past the queue bound, not hoarded."""

    async def run() -> tuple[int, int]:
        link = PeerLink("n1", "n2", "127.0.0.1:9", max_queue=64)  # port 9: nothing listens
        link.start()
        heartbeat = Append(1, "n1", 0, 0, (), 0)
        for _ in range(10_000):
            link.send(heartbeat)
        await asyncio.sleep(0.05)
        queued = link._queue.qsize()
        await link.stop()
        return queued, link.dropped

    queued, dropped = asyncio.run(run())
    assert queued <= 64
    assert dropped >= 10_000 - 64


def test_link_delivers_in_order_and_notices_a_closed_peer() -> None:
    async def run() -> tuple[list[wire.Message], list[tuple[str, bool]]]:
        received: list[wire.Message] = []
        first_connection = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (message := await read_message(reader)) is not None:
                received.append(message)
                if len(received) == 4:
                    first_connection.set()
                    writer.close()  # the peer goes away
                    return

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        changes: list[tuple[str, bool]] = []
        link = PeerLink(
            "n1", "n2", f"127.0.0.1:{port}", on_change=lambda p, up: changes.append((p, up))
        )
        link.send(wire.StatusRequest(99))  # queued while not connected: stale, dropped
        link.start()
        for _ in range(250):
            if link.connected:
                break
            await asyncio.sleep(0.02)
        for i in range(3):
            link.send(wire.StatusRequest(i))
        await asyncio.wait_for(first_connection.wait(), 5)
        for _ in range(100):
            if changes[-1:] == [("n2", False)] or len(changes) >= 3:
                break
            await asyncio.sleep(0.02)
        await link.stop()
        server.close()
        await server.wait_closed()
        return received, changes

    received, changes = asyncio.run(run())
    assert received == [wire.Hello("n1"), *(wire.StatusRequest(i) for i in range(3))]
    assert changes[:2] == [("n2", True), ("n2", False)]


def test_a_link_survives_a_write_to_a_closed_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop raises RuntimeError (not an OSError) when the pump writes to a transport
    that closed under it. That used to end the link's task silently: the node kept
    believing itself connected and never sent that peer anything again (a netns
    partition test saw a healed follower stay cut off)."""
    pump = PeerLink._pump
    failures = [RuntimeError("unable to perform operation on <TCPTransport closed=True>")]

    async def fragile(self: PeerLink, writer: asyncio.StreamWriter) -> None:
        if failures:
            await asyncio.sleep(0.05)
            raise failures.pop()
        await pump(self, writer)

    monkeypatch.setattr(PeerLink, "_pump", fragile)

    async def run() -> list[wire.Message]:
        received: list[wire.Message] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (message := await read_message(reader)) is not None:
                received.append(message)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = PeerLink("n1", "n2", f"127.0.0.1:{port}")
        link.start()
        for _ in range(250):
            if not failures and link.connected:
                break
            await asyncio.sleep(0.02)
        link.send(wire.StatusRequest(7))
        for _ in range(250):
            if wire.StatusRequest(7) in received:
                break
            await asyncio.sleep(0.02)
        await link.stop()
        server.close()
        await server.wait_closed()
        return received

    assert wire.StatusRequest(7) in asyncio.run(run())
