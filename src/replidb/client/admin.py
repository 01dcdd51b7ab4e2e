"""Administrative requests: planned leadership transfer."""

from __future__ import annotations

import time
from collections.abc import Sequence

from replidb.client.transport import Channel, Client, LinkError
from replidb.errors import BadRequest, ProtocolError, Unavailable, error_from_kind
from replidb.transport import wire

__all__ = ["transfer_leader"]


def transfer_leader(
    addresses: str | Sequence[str], target: str, timeout: float = 10.0
) -> tuple[str, str]:
    """Move leadership to ``target``; returns (old leader, new leader).

    Finds the leader through any reachable member, then asks it directly. The leader
    stops taking writes (they wait, they are not refused), catches the target up and
    tells it to campaign, so no acknowledged write is lost."""
    deadline = time.monotonic() + timeout
    client = Client(addresses, timeout=timeout)
    try:
        status = client.status()
    finally:
        client.close()
    if target != status.id and target not in status.peers:
        members = ", ".join(sorted([status.id, *status.peers]))
        raise BadRequest(f"no node {target!r} in this cluster (members: {members})")
    if status.leader is None or status.leader_address is None:
        raise Unavailable("the cluster has no leader right now; retry shortly")
    old = status.leader
    try:
        channel = Channel(status.leader_address, connect_timeout=min(1.0, timeout))
    except LinkError as exc:
        raise Unavailable(str(exc)) from None
    try:
        reply = channel.call(wire.TransferLeader(1, target), deadline)
    except LinkError as exc:
        raise Unavailable(f"the leader did not answer: {exc}") from None
    finally:
        channel.close()
    if not isinstance(reply, wire.TransferReply):
        raise ProtocolError(f"expected a transfer reply, got {type(reply).__name__}")
    if reply.error_kind is not None:
        raise error_from_kind(reply.error_kind, reply.error or "", reply.leader_address)
    return old, reply.leader or target
