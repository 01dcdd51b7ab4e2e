"""Driving one leaderless read or write over a network (issue #9): the asyncio loop
around ``core.leaderless``'s ``WriteOp``/``ReadOp``, shared by the Python client that
coordinates itself (client/kv.py) and by a node coordinating for a client
(node/kv_server.py). The caller supplies ``send(node, message)`` and an inbox where
the replicas' ``KvReply``s for this operation arrive.

- Each phase waits ``phase_timeout`` seconds; then the op decides (another
  coordinator, stand-ins for a sloppy quorum, or give up).
- A replica that answers with an error does not count; once too many have, the op
  fails at once instead of waiting (e.g. the table does not exist).
- After a write, the replicas that never answered get a *hint*: the clock is sent to
  the coordinator with ``hint_for``, which hands it over when they return
  (``handoff``, run in the background: the client has its answer already).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replidb.core import leaderless
from replidb.errors import BadRequest, Error, OutcomeUnknown, Unavailable, error_from_kind
from replidb.transport import wire
from replidb.transport.kv_wire import (
    KvCoordPut,
    KvGet,
    KvReplicate,
    KvReply,
    clock_from_bytes,
    clock_to_bytes,
)

__all__ = ["Outcome", "handoff", "run_read", "run_write", "to_wire"]

Send = Callable[[str, wire.Message], None]


def to_wire(message: Any, use_current: bool = False, wid: str = "") -> wire.Message:
    """A core.leaderless message as it travels. ``use_current``: the write came with
    no context; its coordinator supersedes what it holds (a plain overwrite). ``wid``:
    the write's id, the same on every coordinator it is tried on."""
    if isinstance(message, leaderless.Get):
        return KvGet(message.op, message.key)
    if isinstance(message, leaderless.CoordPut):
        return KvCoordPut(
            message.op, message.key, list(message.context), message.value, use_current, wid
        )
    if isinstance(message, leaderless.Replicate):
        return KvReplicate(message.op, message.key, clock_to_bytes(message.clock), message.hint_for)
    raise TypeError(f"not a leaderless message: {type(message).__name__}")


@dataclass
class Outcome:
    answered: set[str] = field(default_factory=set)  # replicas that answered, ever
    errors: dict[str, str] = field(default_factory=dict)
    error_kinds: set[str] = field(default_factory=set)
    repairs: int = 0  # a read: replicas sent the merged clock (read repair)

    def describe(self) -> str:
        return "; ".join(f"{node}: {why}" for node, why in sorted(self.errors.items()))

    def clients_fault(self) -> Error | None:
        """The replicas refused the request as bad input, all for the same reason:
        that error, once, rather than 'unavailable'."""
        if self.error_kinds == {BadRequest.kind} and len(set(self.errors.values())) == 1:
            return error_from_kind(BadRequest.kind, next(iter(self.errors.values())))
        return None


async def _drive(
    op: leaderless.WriteOp | leaderless.ReadOp,
    send: Send,
    inbox: asyncio.Queue[KvReply],
    phase_timeout: float,
    needed: int,
    outcome: Outcome,
    use_current: bool = False,
    wid: str = "",
) -> None:
    def out_to(messages: list[tuple[str, Any]]) -> None:
        for node, message in messages:
            if isinstance(op, leaderless.ReadOp) and isinstance(message, leaderless.Replicate):
                outcome.repairs += 1
            send(node, to_wire(message, use_current, wid))

    out_to(op.start())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + phase_timeout
    while not op.done:
        try:
            reply = await asyncio.wait_for(inbox.get(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            out = op.timeout()
            deadline = loop.time() + phase_timeout
        else:
            if reply.key != op.key:
                continue  # (an answer to an older operation with the same number)
            if reply.error:
                outcome.errors[reply.sender] = reply.error
                outcome.error_kinds.add(reply.error_kind)
                coordinator_failed = (
                    isinstance(op, leaderless.WriteOp)
                    and op.clock is None
                    and reply.sender == op.coordinator
                )
                if len(outcome.errors) > op.n - needed:
                    op.done = True
                    return
                out = op.timeout() if coordinator_failed else []
            else:
                outcome.answered.add(reply.sender)
                clock = clock_from_bytes(reply.clock)
                out = op.on_reply(leaderless.Reply(reply.op, reply.sender, reply.key, clock))
        out_to(out)


async def run_write(
    op: leaderless.WriteOp,
    send: Send,
    inbox: asyncio.Queue[KvReply],
    phase_timeout: float,
    outcome: Outcome,
    use_current: bool = False,
    wid: str = "",
) -> None:
    """Raise Unavailable if nothing was written, OutcomeUnknown if too few replicas
    acknowledged a write some may hold. ``outcome`` is filled in either way."""
    await _drive(op, send, inbox, phase_timeout, op.w, outcome, use_current, wid)
    if op.ok:
        return
    detail = f" ({outcome.describe()})" if outcome.errors else ""
    if op.clock is None:
        # A coordinator that never answered may have stored it (and will pass it on).
        silent = [n for n in op._tried if n not in outcome.errors and n not in outcome.answered]
        if silent:
            raise OutcomeUnknown(
                f"{', '.join(silent)} took the write and did not answer{detail}: it may or "
                "may not be made"
            )
        raise outcome.clients_fault() or Unavailable(
            f"no replica of the key took the write{detail}"
        )
    raise OutcomeUnknown(
        f"only {len(op.acked)} of the W={op.w} replicas acknowledged the write{detail}: "
        "it is held by some and may or may not survive"
    )


async def run_read(
    op: leaderless.ReadOp, send: Send, inbox: asyncio.Queue[KvReply], phase_timeout: float
) -> Outcome:
    outcome = Outcome()
    await _drive(op, send, inbox, phase_timeout, op.r, outcome)
    if not op.ok:
        fault = outcome.clients_fault()
        if fault is not None:
            raise fault
        detail = f" ({outcome.describe()})" if outcome.errors else ""
        if op.clock is not None:
            raise Unavailable(
                f"the read's repairs were not acknowledged by {op.r} replicas{detail}"
            )
        got = len(op.replies)
        raise Unavailable(f"only {got} of the R={op.r} replicas answered the read{detail}")
    return outcome


async def handoff(
    op: leaderless.WriteOp,
    send: Send,
    inbox: asyncio.Queue[KvReply],
    outcome: Outcome,
    wait: float,
) -> list[str]:
    """After a write: wait up to ``wait`` s for the preferred replicas still silent,
    then leave a hint for each with the coordinator. Returns the replicas hinted."""
    if op.clock is None:
        return []
    preferred = op.ring.preference_list(op.key, op.n)
    missing = [n for n in preferred if n not in outcome.answered and n not in op.acked]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while missing and loop.time() < deadline:
        try:
            reply = await asyncio.wait_for(inbox.get(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            break
        if not reply.error and reply.key == op.key and reply.sender in missing:
            missing.remove(reply.sender)
    clock = clock_to_bytes(op.clock)
    for node in missing:
        send(op.coordinator, KvReplicate(op.op, op.key, clock, hint_for=node))
    return missing
