"""Hybrid logical clocks (core/hlc.py): monotonic whatever physical time does, causal
across messages, close to physical time, skew refused, one total order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replidb.core.hlc import HLC, ClockSkewError, HybridClock

# A run: per step, which node acts, whether it receives the newest stamp of another
# node, and its physical clock, which may jump back and forth.
_steps = st.lists(
    st.tuples(st.integers(0, 2), st.booleans(), st.integers(0, 2), st.integers(0, 10_000)),
    max_size=200,
)


@given(_steps)
def test_stamps_only_grow_and_follow_what_they_saw(steps: list[tuple[int, bool, int, int]]) -> None:
    clocks = [HybridClock(f"n{i}", max_skew_ms=1_000_000) for i in range(3)]
    newest = [HLC(0, 0, f"n{i}") for i in range(3)]
    seen: set[HLC] = set()
    for node, receives, sender, physical in steps:
        clock = clocks[node]
        before = clock.last
        if receives and sender != node:
            stamp = clock.receive(newest[sender], physical)
            assert stamp > newest[sender]  # after everything it could have seen
        else:
            stamp = clock.tick(physical)
        assert stamp > before  # never backwards, even when physical time is
        assert stamp.wall_ms >= physical  # never behind physical time
        assert stamp not in seen  # unique across nodes
        seen.add(stamp)
        newest[node] = stamp


def test_the_wall_follows_physical_time_and_the_counter_fills_the_gaps() -> None:
    clock = HybridClock("n1", max_skew_ms=500)
    assert clock.tick(100) == HLC(100, 0, "n1")
    assert clock.tick(100) == HLC(100, 1, "n1")
    assert clock.tick(90) == HLC(100, 2, "n1")  # the physical clock stepped back
    assert clock.tick(150) == HLC(150, 0, "n1")
    assert clock.receive(HLC(400, 7, "n2"), 160) == HLC(400, 8, "n1")  # 240 ms ahead: fine
    assert clock.receive(HLC(300, 9, "n3"), 170) == HLC(400, 9, "n1")


def test_a_clock_too_far_ahead_is_refused_by_name() -> None:
    clock = HybridClock("n1", max_skew_ms=500)
    clock.tick(1_000)
    with pytest.raises(ClockSkewError, match="n2's clock is 501 ms ahead of ours") as info:
        clock.receive(HLC(1_501, 0, "n2"), 1_000)
    assert info.value.peer == "n2"
    assert clock.last == HLC(1_000, 0, "n1")  # our clock was not dragged forward


def test_ties_are_broken_by_origin_and_text_round_trips() -> None:
    a, b = HLC(5, 1, "n1"), HLC(5, 1, "n2")
    assert a < b and max(a, b) == b
    assert HLC.parse(str(b)) == b and str(b) == "5.1@n2"
    with pytest.raises(ValueError, match="bad hybrid timestamp"):
        HLC.parse("5@n1")


def test_a_restarted_clock_never_stamps_below_its_last_stamp() -> None:
    clock = HybridClock("n1", max_skew_ms=500, last=HLC(2_000, 3, "n1"))
    assert clock.tick(1_000) == HLC(2_000, 4, "n1")
