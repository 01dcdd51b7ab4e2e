"""Dotted version vector sets (core/dvv.py), property-tested against the ground truth
of what each write's client had seen."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from replidb.core import dvv

REPLICAS = ("a", "b", "c")

# A program: a client reads at s and writes, with what it read, through r
# ("write", r, s); replica r takes in replica s's clock ("sync", r, s).
programs = st.lists(
    st.tuples(st.sampled_from(("write", "write", "sync")), st.sampled_from(REPLICAS),
              st.sampled_from(REPLICAS)),
    max_size=40,
)  # fmt: skip


def run(program: list[tuple[str, str, str]]) -> tuple[dict[str, dvv.Clock], set[str], set[str]]:
    """Replicas' clocks; every value written; the values some write superseded."""
    clocks = {r: dvv.Clock() for r in REPLICAS}
    seen: dict[str, set[str]] = {r: set() for r in REPLICAS}  # every value incorporated
    written: set[str] = set()
    superseded: set[str] = set()
    for number, (op, r, s) in enumerate(program):
        if op == "write":
            value = f"w{number}@{r}"
            context = dvv.join(clocks[s])  # what the client read at s
            superseded |= seen[s]
            clocks[r] = dvv.update(dvv.new(context, value), clocks[r], r)
            seen[r] = seen[r] | {value}
            written.add(value)
        else:
            clocks[r] = dvv.sync(clocks[r], clocks[s])
            seen[r] = seen[r] | seen[s]
    return clocks, written, superseded


@settings(max_examples=300, deadline=None)
@given(programs)
def test_after_full_sync_exactly_the_unsuperseded_writes_survive(
    program: list[tuple[str, str, str]],
) -> None:
    clocks, written, superseded = run(program)
    merged = dvv.Clock()
    for clock in clocks.values():
        merged = dvv.sync(merged, clock)
    assert set(dvv.values(merged)) == written - superseded
    assert len(dvv.values(merged)) == len(set(dvv.values(merged)))  # no duplicates


@settings(max_examples=300, deadline=None)
@given(programs, st.sampled_from(REPLICAS), st.sampled_from(REPLICAS))
def test_sync_is_commutative_and_idempotent(
    program: list[tuple[str, str, str]], r: str, s: str
) -> None:
    clocks, _, _ = run(program)
    a, b = clocks[r], clocks[s]
    ab, ba = dvv.sync(a, b), dvv.sync(b, a)
    assert ab.entries == ba.entries and set(dvv.values(ab)) == set(dvv.values(ba))
    assert dvv.sync(a, a) == a
    assert dvv.sync(ab, a).entries == ab.entries


def test_concurrent_writes_become_siblings_and_a_write_after_reading_both_resolves_them() -> None:
    base = dvv.update(dvv.new([], "v0"), dvv.Clock(), "a")
    context = dvv.join(base)
    x = dvv.update(dvv.new(context, "x"), base, "a")
    y = dvv.update(dvv.new(context, "y"), base, "b")  # same context: concurrent
    both = dvv.sync(x, y)
    assert sorted(dvv.values(both)) == ["x", "y"]
    assert not dvv.less(x, y) and not dvv.less(y, x) and dvv.less(x, both)
    resolved = dvv.update(dvv.new(dvv.join(both), "xy"), both, "c")
    assert dvv.values(resolved) == ["xy"]
    # A replica that only saw x learns the resolution supersedes it.
    assert dvv.values(dvv.sync(x, resolved)) == ["xy"]


def test_reconcile_collapses_siblings_into_one_version() -> None:
    x = dvv.update(dvv.new([], "x"), dvv.Clock(), "a")
    y = dvv.update(dvv.new([], "y"), dvv.Clock(), "b")
    merged = dvv.reconcile(dvv.sync(x, y), "a", max)
    assert dvv.values(merged) == ["y"]
    assert dvv.less(dvv.sync(x, y), merged)
