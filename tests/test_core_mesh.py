"""The multi-leader mesh core (core/mesh.py): messages in, a Ready out, no I/O."""

from __future__ import annotations

import pytest

from replidb.core.hlc import HLC
from replidb.core.mesh import (
    Change,
    ChangeAck,
    ChangeBatch,
    Mesh,
    MeshConfig,
    decide,
    forwards,
    out_links,
)

NODES = ("a", "b", "c")


class Log:
    def __init__(self) -> None:
        self.order: list[Change] = []

    def scan(self, after: int, limit: int) -> list[tuple[int, Change]]:
        return [(after + 1 + i, c) for i, c in enumerate(self.order[after : after + limit])]

    def position(self, origin: str, seq: int) -> int:
        for i, c in enumerate(self.order):
            if (c.origin, c.seq) == (origin, seq):
                return i + 1
        return 0


def node(name: str, topology: str = "all-to-all", **kw: int) -> tuple[Mesh, Log]:
    log = Log()
    return Mesh(MeshConfig(name, NODES, topology, **kw), log), log  # type: ignore[arg-type]


def write(mesh: Mesh, log: Log, now: int) -> Change:
    seq, stamp, deps = mesh.stamp(now)
    change = Change(mesh.id, seq, stamp.wall_ms, stamp.logical, deps, b"rows")
    log.order.append(change)
    mesh.committed(change)
    return change


def test_topologies_decide_links_and_what_each_passes_on() -> None:
    assert out_links("a", NODES, "all-to-all", "a") == ["b", "c"]
    assert out_links("b", NODES, "star", "a") == ["a"]
    assert out_links("a", NODES, "star", "a") == ["b", "c"]
    assert out_links("c", NODES, "ring", "a") == ["a"]
    assert forwards("a", "a", "b", "all-to-all", "a")
    assert not forwards("a", "c", "b", "all-to-all", "a")  # only its own
    assert forwards("a", "c", "b", "star", "a")  # the hub passes everything on ...
    assert not forwards("a", "b", "b", "star", "a")  # ... but never back to its origin
    assert forwards("b", "c", "c", "ring", "a") is False
    assert forwards("b", "a", "c", "ring", "a")
    with pytest.raises(ValueError, match="unknown topology 'mesh'"):
        out_links("a", NODES, "mesh", "a")


def test_a_change_waits_for_its_dependencies_and_applies_once() -> None:
    a, a_log = node("a")
    b, b_log = node("b")
    c, _ = node("c")
    insert = write(a, a_log, 1000)
    b.step(ChangeBatch("a", 1000, (insert,)), 1000)
    assert b.ready().deliver == (insert,)
    b_log.order.append(insert)
    update = write(b, b_log, 1001)  # made after b applied a's insert
    assert update.deps == {"a": 1}
    # c gets b's update first (a reordered link): it waits ...
    c.step(ChangeBatch("b", 1001, (update,)), 1001)
    ready = c.ready()
    assert ready.deliver == () and c.pending == 1
    assert ready.messages == (("b", ChangeAck("c", 1001, {"a": 0, "b": 0, "c": 0})),)
    # ... until the insert arrives; then both, in causal order; a copy is dropped.
    c.step(ChangeBatch("a", 1002, (insert, insert)), 1002)
    assert c.ready().deliver == (insert, update)
    c.step(ChangeBatch("a", 1003, (insert,)), 1003)
    assert c.ready().deliver == () and c.duplicates == 1 and c.pending == 0


def test_a_sender_resumes_from_what_the_receiver_acknowledges() -> None:
    a, a_log = node("a", resend_ticks=3, max_batch=2)
    changes = [write(a, a_log, 1000 + i) for i in range(3)]
    a.tick(1010)  # not yet known: an empty batch asks b where it is
    assert a.ready().messages[0] == ("b", ChangeBatch("a", 1010))
    a.step(ChangeAck("b", 1010, {"a": 1}), 1010)  # b already has the first
    sent = [m for to, m in a.ready().messages if to == "b"]
    assert sent == [ChangeBatch("a", 1010, tuple(changes[1:3]))]
    for now in (1011, 1012, 1013):  # no ack: sent again after resend_ticks
        a.tick(now)
    again = [m for to, m in a.ready().messages if to == "b" and m.changes]  # type: ignore[union-attr]
    assert again == [ChangeBatch("a", 1013, tuple(changes[1:3]))]


def test_a_clock_beyond_the_bound_is_refused_by_name() -> None:
    b, _ = node("b", max_skew_ms=500)
    a, a_log = node("a", max_skew_ms=500)
    change = write(a, a_log, 10_000)
    b.step(ChangeBatch("a", 10_000, (change,)), 9_000)
    ready = b.ready()
    assert ready.deliver == () and ready.messages == ()
    assert ready.refused == (
        "a's clock is 1000 ms ahead of ours (more than the allowed 500 ms): its messages "
        "are refused until the clocks agree",
    )
    b.step(ChangeBatch("a", 9_000, (change,)), 9_000)  # message clock fine, change not
    assert "stamped 1000 ms ahead" in b.ready().refused[0]
    b.step(ChangeBatch("a", 9_600, (change,)), 9_600)  # within the bound: applied
    assert b.ready().deliver == (change,)


def test_decide_keeps_the_highest_timestamp_and_flags_concurrent_writes() -> None:
    old, mine, theirs = HLC(1, 0, "a"), HLC(5, 0, "a"), HLC(5, 0, "b")
    assert decide(None, None, theirs) == (True, False)  # a new row
    assert decide(old, old, theirs) == (True, False)  # made on top of what we have
    assert decide(mine, old, theirs) == (True, True)  # concurrent; b breaks the tie
    assert decide(theirs, old, mine) == (False, True)  # the same winner the other way
