"""An outbound link to one peer: connect, say Hello, stream frames; reconnect with
backoff when the connection breaks.

The send queue is bounded. When it is full the newest message is dropped and counted:
the consensus protocol retries on its own (heartbeats, resends), so dropping is safe,
and a slow or dead follower cannot grow the leader's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from replidb.transport import wire
from replidb.transport.framing import frame

__all__ = ["PeerLink", "split_address"]

log = logging.getLogger("replidb.transport")


def split_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); ValueError names what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _detect_silent_loss(writer: asyncio.StreamWriter) -> None:
    """A partition closes nothing: without these, a dead link looks healthy until TCP's
    retransmissions give up (minutes). Data unacknowledged for 2 s, or an idle link
    whose keepalive probes go unanswered for ~3 s, now ends the connection."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 2000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)


class PeerLink:
    def __init__(
        self,
        own_id: str,
        peer_id: str,
        address: str,
        max_queue: int = 4096,
        on_change: Callable[[str, bool], None] | None = None,
        own_address: str = "",
    ) -> None:
        self.own_id = own_id
        self.own_address = own_address  # told to the peer, which may not know us yet
        self.peer_id = peer_id
        self.address = address
        self.connected = False
        self.dropped = 0
        self._queue: asyncio.Queue[wire.Message] = asyncio.Queue(max_queue)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._ever_connected = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"link-{self.peer_id}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def send(self, message: wire.Message) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if self._on_change is not None and (connected or self._ever_connected):
                self._on_change(self.peer_id, connected)
            self._ever_connected |= connected

    async def _run(self) -> None:
        host, port = split_address(self.address)
        backoff = 0.05
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, connected = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
                writer = connected
                _detect_silent_loss(connected)
                connected.write(frame(wire.Hello(self.own_id, self.own_address)))
                await connected.drain()
                # What was queued while we were away is stale too (the loop below only
                # clears it after a failed attempt): appends from before the leader
                # compacted its log once reached a new node ahead of its snapshot offer.
                while not self._queue.empty():
                    self._queue.get_nowait()
                self._set_connected(True)
                backoff = 0.05
                # The peer never writes on this connection, so a read that returns
                # means it closed or died: notice at once, not at the next send.
                sending = asyncio.ensure_future(self._pump(connected))
                closed = asyncio.ensure_future(reader.read(1))
                try:
                    await asyncio.wait({sending, closed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (sending, closed):
                        task.cancel()
                        # (whatever ended it: the link must live on and reconnect)
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                self._set_connected(False)
            except (TimeoutError, OSError, ConnectionError):
                self._set_connected(False)
            except Exception as exc:  # never let the link die silently: reconnect
                log.warning("link to %s failed (%r); reconnecting", self.peer_id, exc)
                self._set_connected(False)
            finally:
                if writer is not None:
                    # abort, not close: a graceful close waits for unsent data to reach
                    # a peer that may be unreachable, and stalled shutdown for seconds.
                    writer.transport.abort()
            # While disconnected, stale messages are useless: terms and heartbeats
            # regenerate whatever is still needed.
            while not self._queue.empty():
                self._queue.get_nowait()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        while True:
            message = await self._queue.get()
            chunk = [frame(message)]
            while not self._queue.empty() and len(chunk) < 256:
                chunk.append(frame(self._queue.get_nowait()))
            writer.write(b"".join(chunk))
            await writer.drain()
