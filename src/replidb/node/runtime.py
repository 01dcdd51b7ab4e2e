"""What every kind of node's asyncio runtime does the same way: own its background
tasks, and sort an incoming connection into a peer's (it starts with Hello) or a
client's, closing it however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from replidb.errors import ProtocolError
from replidb.transport import wire
from replidb.transport.framing import frame, read_message

__all__ = ["Tasks", "answer_when_ready", "serve_connection"]


class Tasks:
    """Background tasks a node started, cancelled together when it stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def answer_when_ready(reply: Awaitable[wire.Message], writer: asyncio.StreamWriter) -> None:
    """Send ``reply`` once it is ready, unless the client has gone meanwhile (spawned, so
    a client's next request is read while this one is served)."""
    message = await reply
    if not writer.is_closing():
        writer.write(frame(message))


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    max_frame: int,
    on_peer: Callable[[wire.Hello, asyncio.StreamReader], Awaitable[None]],
    on_client: Callable[
        [wire.Message, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
    ],
    log: logging.Logger,
) -> None:
    origin = writer.get_extra_info("peername")
    try:
        first = await read_message(reader, max_frame)
        if first is None:
            return
        if isinstance(first, wire.Hello):
            await on_peer(first, reader)
        else:
            await on_client(first, reader, writer)
    except ProtocolError as exc:
        log.warning("rejected input from %s: %s", origin, exc)
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass  # (cancelled: the node is stopping)
    finally:
        writer.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await writer.wait_closed()
