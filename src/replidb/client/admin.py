"""Administrative requests: planned leadership transfer; membership changes (join a
node as a learner, promote it once it has caught up, remove one)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from replidb.client.transport import Channel, Client, LinkError
from replidb.errors import (
    BadRequest,
    NotLeader,
    OutcomeUnknown,
    ProtocolError,
    Unavailable,
    error_from_kind,
)
from replidb.transport import wire

__all__ = ["change_membership", "join", "leader_status", "remove", "transfer_leader"]

_RETRY_S = 0.2


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


def leader_status(addresses: str | Sequence[str], timeout: float = 10.0) -> wire.NodeStatus:
    """The leader's own status (its membership and what each member holds), found
    through any reachable member; Unavailable while there is no leader."""
    client = Client(addresses, timeout=timeout)
    try:
        status = client.status()
        if status.leader_address is None:
            raise Unavailable("the cluster has no leader right now; retry shortly")
        if status.leader == status.id:
            return status
        return client.status(status.leader_address, timeout=timeout)
    finally:
        client.close()


def change_membership(
    addresses: str | Sequence[str], op: str, node: str, address: str = "", timeout: float = 30.0
) -> wire.MembershipReply:
    """One membership change (``add-learner``, ``promote``, ``remove``), made by the
    leader and answered once committed. Retried until ``timeout`` while there is no
    leader or the leader is busy with another change; asking for a change already made
    succeeds, so a retry after an unknown outcome is safe."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            reply = _ask_leader(addresses, wire.ChangeMembership(1, op, node, address), deadline)
        except (Unavailable, NotLeader, OutcomeUnknown) as exc:
            last = exc
            time.sleep(_RETRY_S)
            continue
        if not isinstance(reply, wire.MembershipReply):
            raise ProtocolError(f"expected a membership reply, got {type(reply).__name__}")
        if reply.error_kind in (Unavailable.kind, NotLeader.kind, OutcomeUnknown.kind):
            last = error_from_kind(reply.error_kind, reply.error or "", reply.leader_address)
            time.sleep(_RETRY_S)
            continue
        if reply.error_kind is not None:
            raise error_from_kind(reply.error_kind, reply.error or "", reply.leader_address)
        return reply
    raise Unavailable(f"{op} {node} did not complete within {timeout:g}s: {last}")


def join(
    addresses: str | Sequence[str],
    node: str,
    address: str,
    *,
    voter: bool = True,
    timeout: float = 600.0,
    progress: Callable[[int, int], None] | None = None,
) -> wire.MembershipReply:
    """Add ``node`` (listening at ``address``) to the cluster: first as a learner, which
    receives the log (or a snapshot) without voting; then, if ``voter``, promote it once
    it holds everything committed. ``progress(held, commit)`` is called while it
    catches up. Start the node first (``replidb serve ... --join``)."""
    deadline = time.monotonic() + timeout
    reply = change_membership(addresses, "add-learner", node, address, timeout)
    if not voter:
        return reply
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unavailable(f"{node} did not catch up within {timeout:g}s; it stays a learner")
        try:
            status = leader_status(addresses, min(remaining, 10.0))
        except (Unavailable, NotLeader):
            time.sleep(_RETRY_S)
            continue
        if node in status.voters:
            return change_membership(addresses, "promote", node, timeout=remaining)
        held = status.match_index.get(node, 0)
        if progress is not None:
            progress(held, status.commit_index)
        if held >= status.commit_index:
            try:
                return change_membership(addresses, "promote", node, timeout=min(remaining, 5.0))
            except Unavailable:
                pass  # moved on while we asked (not caught up after all): keep waiting
        time.sleep(_RETRY_S)


def remove(
    addresses: str | Sequence[str], node: str, timeout: float = 30.0
) -> wire.MembershipReply:
    """Take ``node`` out of the cluster (a voter or a learner; the leader itself hands
    over first). Once this returns the node counts for nothing; stop its process."""
    return change_membership(addresses, "remove", node, timeout=timeout)


def _ask_leader(
    addresses: str | Sequence[str], request: wire.ChangeMembership, deadline: float
) -> wire.Message:
    status = leader_status(addresses, max(0.1, min(10.0, deadline - time.monotonic())))
    assert status.leader_address is not None
    try:
        channel = Channel(status.leader_address, connect_timeout=1.0)
    except LinkError as exc:
        raise Unavailable(str(exc)) from None
    try:
        return channel.call(request, deadline)
    except LinkError as exc:
        raise OutcomeUnknown(f"the leader did not answer: {exc}") from None
    finally:
        channel.close()
