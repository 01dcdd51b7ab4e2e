"""The asyncio driver of leaderless reads and writes (replidb/kv_coordinator.py): what
a client is told when replicas are silent or refuse, over a scripted network."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from replidb.core import leaderless
from replidb.core.hashring import HashRing
from replidb.errors import BadRequest, OutcomeUnknown
from replidb.kv_coordinator import Outcome, run_write
from replidb.transport.kv_wire import KvCoordPut, KvReply, encode_key

KEY = encode_key("t", [1])
RING = HashRing(["n1", "n2", "n3"], 8)


def _write(silent: set[str]) -> None:
    """Every replica refuses the write as bad input, except ``silent`` ones, which
    take it and never answer."""

    async def go() -> None:
        inbox: asyncio.Queue[KvReply] = asyncio.Queue()

        def send(node: str, message: Any) -> None:
            if node not in silent and isinstance(message, KvCoordPut):
                inbox.put_nowait(KvReply(message.op, node, KEY, error="no such table: t",
                                         error_kind=BadRequest.kind))  # fmt: skip

        op = leaderless.WriteOp(1, KEY, {"id": 1}, [], RING, 3, 2)
        await run_write(op, send, inbox, 0.05, Outcome())

    asyncio.run(go())


def test_every_replica_refusing_is_the_clients_fault_once() -> None:
    with pytest.raises(BadRequest, match=r"^no such table: t$"):
        _write(silent=set())


def test_a_silent_coordinator_may_have_stored_the_write() -> None:
    first = RING.preference_list(KEY, 3)[0]
    with pytest.raises(OutcomeUnknown, match=f"{first} took the write and did not answer"):
        _write(silent={first})
