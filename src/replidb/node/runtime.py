"""What every kind of node's asyncio runtime does the same way: own its background
tasks, and sort an incoming connection into a peer's (it starts with Hello) or a
client's, closing it however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from replidb.errors import ProtocolError
from replidb.transport import wire
from replidb.transport.framing import frame, read_message

__all__ = ["Tasks", "answer_when_ready", "refuse_other_layouts", "serve_connection"]


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


# The file each kind of node keeps its data in, inside its data directory.
_LAYOUTS = {
    "replidb.db": "a single-leader",
    "data.db": "a wal-shipping",
    "mesh.db": "a multi-leader",
    "kv.db": "a leaderless",
}


def refuse_other_layouts(data_dir: Path, kind: str, others: tuple[str, ...]) -> None:
    """ValueError if ``data_dir`` holds one of the ``others`` layouts: a node of
    ``kind`` must not start on (and write beside) another kind's data."""
    for name in others:
        if (data_dir / name).exists():
            raise ValueError(
                f"{data_dir} holds {_LAYOUTS[name]} node's data: {kind} node needs its own "
                "(empty) data directory"
            )


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
