"""Blocking request/reply over one TCP socket per node, and the retrying ``Client``.

The client is synchronous on purpose: DB-API callers are synchronous, and one request
at a time per socket keeps replies trivially matched to requests. Everything foreign
(OSError, socket timeouts, msgspec errors) is translated here into ``replidb.errors``.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Sequence

import msgspec

from replidb.core.policy import parse_policy
from replidb.errors import (
    BadRequest,
    Error,
    InterfaceError,
    NotLeader,
    OutcomeUnknown,
    ProtocolError,
    Unavailable,
    error_from_kind,
)
from replidb.transport import wire
from replidb.transport.framing import DEFAULT_MAX_FRAME

__all__ = [
    "Channel",
    "Client",
    "LinkError",
    "check_consistency",
    "check_sync",
    "parse_address",
    "parse_addresses",
    "probe_status",
]

_HEADER = struct.Struct(">I")
_CONSISTENCY = ("any", "session", "leader", "linearizable")
# Errors after which another attempt (same node or another) may succeed.
_RETRYABLE = (NotLeader, Unavailable)


class LinkError(Exception):
    """The socket failed. ``sent`` is True when the request may have reached the node."""

    def __init__(self, message: str, *, sent: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.timed_out = timed_out  # the node may be hung: do not retry it at once


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); InterfaceError naming it if bad."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InterfaceError(f"bad address {address!r}: expected HOST:PORT")
    return host, int(port_text)


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """A comma-separated string or a list -> validated, stripped addresses (at least one)."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    result = []
    for item in items:
        if not isinstance(item, str):
            raise InterfaceError(f"bad address {item!r}: expected a HOST:PORT string")
        parse_address(item)
        result.append(item.strip())
    if not result:
        raise InterfaceError("no address given: expected HOST:PORT[,HOST:PORT...]")
    return result


def check_consistency(level: str) -> str:
    """Validate a read consistency level: any, bounded:SECONDS, session, leader, linearizable."""
    if level in _CONSISTENCY:
        return level
    name, _, bound = level.partition(":")
    if name == "bounded":
        try:
            if float(bound) >= 0:
                return level
        except ValueError:
            pass
    raise InterfaceError(
        f"bad consistency {level!r}: expected any, bounded:SECONDS, session, leader or linearizable"
    )


def check_sync(policy: str) -> str:
    """Validate a per-transaction commit policy ("" means the cluster's default)."""
    if not policy:
        return ""
    try:
        return str(parse_policy(policy))
    except ValueError as exc:
        raise InterfaceError(f"bad sync policy: {exc}") from None


class Channel:
    """One connected socket to one node; one request in flight at a time."""

    def __init__(self, address: str, connect_timeout: float) -> None:
        self.address = address
        host, port = parse_address(address)
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:  # refused, unreachable, DNS failure, connect timeout
            raise LinkError(f"{address}: cannot connect: {_describe(exc)}", sent=False)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(
        self,
        request: wire.Execute | wire.StatusRequest | wire.TransferLeader | wire.ChangeMembership,
        deadline: float,
    ) -> wire.Message:
        """Send ``request``, return the reply with the same id, by ``deadline`` (monotonic)."""
        self.send(request, deadline)
        while True:
            reply = self.receive(deadline)
            # A stale reply cannot normally arrive (we drop sockets after a failed call),
            # but skipping it is cheaper than reasoning about it.
            if getattr(reply, "id", None) == request.id:
                return reply

    def send(self, request: wire.Message, deadline: float) -> None:
        try:
            payload = wire.encode(request)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InterfaceError(f"cannot encode request: {exc}")
        if len(payload) > DEFAULT_MAX_FRAME:
            raise BadRequest(f"request of {len(payload)} bytes exceeds the frame limit")
        try:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            self._sock.sendall(_HEADER.pack(len(payload)) + payload)
        except OSError as exc:
            # Part of the frame may have left: for a write, assume it might apply.
            raise LinkError(f"{self.address}: send failed: {_describe(exc)}", sent=True)

    def receive(self, deadline: float) -> wire.Message:
        """The next message from the node, by ``deadline``."""
        (length,) = _HEADER.unpack(self._recv_exact(_HEADER.size, deadline))
        if length > DEFAULT_MAX_FRAME:
            raise ProtocolError(f"{self.address}: reply frame of {length} bytes is too long")
        body = self._recv_exact(length, deadline)
        try:
            return wire.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(f"{self.address}: undecodable reply: {exc}")

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(
                    f"{self.address}: no reply before the deadline", sent=True, timed_out=True
                )
            try:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(min(n - len(chunks), 1 << 20))
            except TimeoutError:
                raise LinkError(
                    f"{self.address}: no reply before the deadline", sent=True, timed_out=True
                )
            except OSError as exc:
                raise LinkError(f"{self.address}: connection lost: {_describe(exc)}", sent=True)
            if not chunk:
                raise LinkError(f"{self.address}: connection closed before a reply", sent=True)
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def _describe(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def probe_status(address: str, timeout: float) -> wire.NodeStatus:
    """One status request to one node, one attempt (used to poll every member)."""
    deadline = time.monotonic() + timeout
    try:
        channel = Channel(address, connect_timeout=timeout)
    except LinkError as exc:
        raise Unavailable(str(exc))
    try:
        reply = channel.call(wire.StatusRequest(id=1), deadline)
    except LinkError as exc:
        raise Unavailable(str(exc))
    finally:
        channel.close()
    if not isinstance(reply, wire.StatusReply):
        raise ProtocolError(f"{address}: expected a status reply, got {type(reply).__name__}")
    return reply.status


class Client:
    """Low-level client: sends requests to the first reachable node, retries by itself.

    Retries (within ``timeout`` seconds, backoff 50 ms doubling to 250 ms) on connection
    failures, ``unavailable`` and ``not_leader``, and moves on from a node that has not
    answered within ``attempt_timeout`` (default: a quarter of ``timeout``, at least 1 s).
    A write keeps its ``client_id``/``seq`` across attempts, so it applies at most once.
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        timeout: float = 10.0,
        consistency: str = "any",
        client_id: str | None = None,
        sync: str = "",
        attempt_timeout: float | None = None,
    ) -> None:
        self.addresses = parse_addresses(addresses)
        self.timeout = float(timeout)
        # One attempt may not use the whole budget: a hung node (stopped, or cut off
        # with its connections open) must not keep us from trying the others.
        self.attempt_timeout = (
            float(attempt_timeout)
            if attempt_timeout is not None
            else min(self.timeout, max(1.0, self.timeout / 4))
        )
        self.consistency = check_consistency(consistency)
        self.sync = check_sync(sync)
        self.max_term = 0  # the newest leader term seen: a staler leader refuses our writes
        # The session token: the newest log position any answer reflected. With
        # consistency "session", no node answers before it has applied this much.
        self.position = 0
        self.client_id = client_id or uuid.uuid4().hex
        self.last_address: str | None = None  # the node that answered last
        self._seq = 0
        self._next_id = 0
        self._current = 0  # index of the address that answered last: stick to it
        self._leader_hint: str | None = None  # writes go here first
        self._channels: dict[str, Channel] = {}

    def next_seq(self) -> int:
        """Reserve the sequence number of the next write transaction."""
        self._seq += 1
        return self._seq

    def execute(
        self,
        statements: Sequence[wire.Statement],
        *,
        write: bool,
        dry_run: bool = False,
        seq: int | None = None,
        timeout: float | None = None,
        expect: tuple[str, int] = ("", 0),
    ) -> list[wire.StatementResult]:
        """Run ``statements`` as one atomic transaction; the results, one per statement.

        ``write=True`` gives the request a fresh ``seq`` (or ``seq``) so retries are
        exactly-once. ``dry_run`` executes and rolls back on the leader. ``expect``:
        (digest, count) of results the first ``count`` statements must give again, or
        the leader applies nothing and raises Conflict.
        """
        return self.request(
            statements, write=write, dry_run=dry_run, seq=seq, timeout=timeout, expect=expect
        ).results

    def request(
        self,
        statements: Sequence[wire.Statement],
        *,
        write: bool,
        dry_run: bool = False,
        seq: int | None = None,
        timeout: float | None = None,
        expect: tuple[str, int] = ("", 0),
    ) -> wire.ExecuteReply:
        """Like ``execute`` but returns the whole successful reply (node, index, term)."""
        exactly_once = write and not dry_run
        if exactly_once and seq is None:
            seq = self.next_seq()
        request = wire.Execute(
            id=0,
            statements=list(statements),
            # Only writes carry the session: the leader treats any client_id as a request
            # to deduplicate, and a read must not be compared against the last write.
            client_id=self.client_id if exactly_once else "",
            seq=seq if exactly_once and seq is not None else 0,
            dry_run=dry_run,
            consistency=self.consistency,
            sync=self.sync if exactly_once else "",
            term=self.max_term,
            # Only reads wait for the token: writes go to the leader, which has it all.
            min_position=self.position if self.consistency == "session" and not write else 0,
            expect=expect[0],
            expect_count=expect[1],
        )
        reply = self._call(request, to_leader=write or dry_run, write=exactly_once, timeout=timeout)
        if not isinstance(reply, wire.ExecuteReply):  # _call checked; this informs mypy
            raise ProtocolError(f"expected an execute reply, got {type(reply).__name__}")
        return reply

    def status(
        self, address: str | None = None, *, timeout: float | None = None
    ) -> wire.NodeStatus:
        """The NodeStatus of ``address`` (one attempt), or of the first reachable node."""
        if address is not None:
            return probe_status(address, self.timeout if timeout is None else timeout)
        reply = self._call(wire.StatusRequest(id=0), to_leader=False, write=False, timeout=timeout)
        if not isinstance(reply, wire.StatusReply):
            raise ProtocolError(f"expected a status reply, got {type(reply).__name__}")
        return reply.status

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def _channel(self, address: str, deadline: float) -> Channel:
        channel = self._channels.get(address)
        if channel is None:
            timeout = max(min(1.0, deadline - time.monotonic()), 0.001)
            channel = self._channels[address] = Channel(address, connect_timeout=timeout)
        return channel

    def _drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            channel.close()

    def _call(
        self,
        request: wire.Execute | wire.StatusRequest,
        *,
        to_leader: bool,
        write: bool,
        timeout: float | None,
    ) -> wire.Message:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        backoff = 0.05
        maybe_applied = False  # some attempt of this write may have reached a node
        last_error = "no attempt made"
        hint = self._leader_hint if to_leader else None
        index = self._current
        while time.monotonic() < deadline:
            from_hint = hint is not None
            address = hint if hint is not None else self.addresses[index]
            hint = None
            self._next_id += 1
            attempt = msgspec.structs.replace(request, id=self._next_id)
            reused = address in self._channels
            attempt_deadline = min(deadline, time.monotonic() + self.attempt_timeout)
            try:
                reply = self._channel(address, attempt_deadline).call(attempt, attempt_deadline)
            except LinkError as exc:
                self._drop(address)
                maybe_applied = maybe_applied or (write and exc.sent)
                last_error = str(exc)
                if reused and not exc.timed_out and time.monotonic() < deadline:
                    # Most likely the node closed an idle connection: reconnect to the
                    # same node at once rather than fail over (reads stick to it).
                    hint = address if from_hint else None
                    continue
            except ProtocolError as exc:
                self._drop(address)
                if write:
                    raise OutcomeUnknown(f"{exc}; the write may or may not have been applied")
                raise
            else:
                expected = (
                    wire.ExecuteReply if isinstance(request, wire.Execute) else wire.StatusReply
                )
                if not isinstance(reply, (expected, wire.ExecuteReply)):
                    self._drop(address)
                    raise ProtocolError(f"{address}: unexpected reply {type(reply).__name__}")
                if not isinstance(reply, wire.ExecuteReply) or reply.error_kind is None:
                    if isinstance(reply, wire.ExecuteReply):
                        self.max_term = max(self.max_term, reply.term)
                        self.position = max(self.position, reply.position)
                    self.last_address = address
                    if not from_hint:
                        self._current = index
                    if to_leader and isinstance(reply, wire.ExecuteReply):
                        # A node that forwarded the write names the leader: go there next.
                        forwarded_to = reply.leader_address
                        if forwarded_to and forwarded_to != address:
                            self._leader_hint = forwarded_to
                    return reply
                error = _reply_error(reply)
                if write and error.kind == "outcome_unknown":
                    # Safe to retry: the same client_id/seq is applied at most once.
                    maybe_applied = True
                elif not isinstance(error, _RETRYABLE):
                    raise error
                last_error = f"{address}: {error}"
                hint = _leader_from(error, address)
                if hint is not None:
                    self._leader_hint = hint
            # This address failed: move on to the next listed one, or forget a dead hint.
            if not from_hint:
                index = (index + 1) % len(self.addresses)
                if hint is not None:
                    continue  # a fresh leader hint: follow it at once
            elif hint is None:
                self._leader_hint = None
            pause = min(backoff, deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)
            backoff = min(backoff * 2, 0.25)
        if maybe_applied:
            raise OutcomeUnknown(
                f"no reply within {budget:g}s; the write may or may not have been applied "
                f"(last error: {last_error})"
            )
        raise Unavailable(f"no node answered within {budget:g}s (last error: {last_error})")


def _reply_error(reply: wire.ExecuteReply) -> Error:
    message = reply.error or reply.error_kind or "unknown error"
    return error_from_kind(reply.error_kind or "internal", message, reply.leader_address)


def _leader_from(error: Error, address: str) -> str | None:
    """The leader address a not_leader error points at, if it is usable and elsewhere."""
    if not isinstance(error, NotLeader) or not error.leader_address:
        return None
    if error.leader_address == address:
        return None
    try:
        parse_address(error.leader_address)
    except InterfaceError:
        return None
    return error.leader_address.strip()
