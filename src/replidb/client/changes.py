"""The change stream as an iterator: ``replidb.client.changes(...)`` (node/changes.py
serves it).

Yields one JSON-ready envelope per row change, in log order, at least once. The
iterator keeps the events it has yielded that are not yet known committed; when it
reconnects (to any node) it sends their positions, and if the cluster's history no
longer has them — an asynchronous failover discarded those writes — it yields a
retraction for each (``"op": "x"``, with the retracted event's before/after and
``"retracts"``: its op) before going on with the cluster's history. A consumer resumed
from a saved position alone (``start="TERM:INDEX"``) gets one retraction covering the
range instead, as the payloads went with the process that saw them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

from replidb.client.transport import Channel, LinkError, parse_addresses
from replidb.errors import BadRequest, Unavailable
from replidb.transport import wire

__all__ = ["changes", "parse_position"]

_HEARTBEAT_S = 5.0  # the node sends something at least every second while following


def parse_position(text: str) -> tuple[int, int]:
    """``TERM:INDEX`` (as events print it) or a bare ``INDEX`` -> (index, term)."""
    term, _, index = text.strip().rpartition(":")
    if not index.isdigit() or (term and not term.isdigit()):
        raise BadRequest(f"bad position {text!r}: expected TERM:INDEX, e.g. 3:1042")
    return int(index), int(term or 0)


def _retraction(event: wire.ChangeEvent) -> dict[str, Any]:
    envelope = event.envelope()
    envelope["retracts"], envelope["op"] = envelope["op"], "x"
    return envelope


def changes(
    addresses: str | Sequence[str],
    *,
    start: str | None = None,
    tables: Sequence[str] = (),
    follow: bool = False,
    timeout: float = 10.0,
) -> Iterator[dict[str, Any]]:
    """Row changes from the cluster, from ``start`` (a position an event printed, as
    ``TERM:INDEX``: that transaction is delivered again, so a consumer killed half way
    through one loses nothing; default: the beginning of the retained log);
    ``follow``: wait for more forever. Unavailable if no node answers in ``timeout``."""
    nodes = parse_addresses(addresses)
    window: list[wire.ChangeEvent] = []  # yielded, not known committed
    position = parse_position(start) if start else None
    again = position[0] if position else 0  # deliver this transaction again (once)
    turn = itertools.cycle(nodes)
    failed_since: float | None = None
    while True:
        address = next(turn)
        known = [(e.index, e.term) for e in window] or ([position] if position else [])
        request = wire.ChangesRequest(
            1, known=known, start=again, tables=list(tables), follow=follow
        )
        try:
            channel = Channel(address, connect_timeout=min(timeout, 2.0))
            try:
                channel.send(request, time.monotonic() + timeout)
                while True:
                    batch = channel.receive(time.monotonic() + _HEARTBEAT_S)
                    if not isinstance(batch, wire.ChangesBatch):
                        continue
                    failed_since = None
                    if batch.error:
                        raise BadRequest(batch.error)
                    again = 0
                    if batch.resume_from:
                        gone = [e for e in window if e.index >= batch.resume_from]
                        yield from (_retraction(e) for e in reversed(gone))
                        if not gone and position and position[0] >= batch.resume_from:
                            yield _range_retraction(batch.resume_from, position)
                        window = [e for e in window if e.index < batch.resume_from]
                        position = (batch.resume_from - 1, 0)
                    for event in batch.events:
                        yield event.envelope()
                        window.append(event)
                        position = (event.index, event.term)
                    window = [e for e in window if e.index > batch.commit]
                    if batch.end:
                        return
            finally:
                channel.close()
        except LinkError:
            now = time.monotonic()
            failed_since = failed_since or now
            if now - failed_since > timeout:
                raise Unavailable(f"no node streamed changes within {timeout:g}s") from None
            time.sleep(0.2)


def _range_retraction(first: int, position: tuple[int, int]) -> dict[str, Any]:
    return {
        "op": "x",
        "before": None,
        "after": None,
        "source": {"from_index": first, "to_index": position[0], "term": position[1]},
        "retracts": "range",
    }
