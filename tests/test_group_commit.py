"""Group commit: several client writes in one SQLite transaction (storage), and the
batching of requests that arrive in one event-loop turn (node/group_commit.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from replidb.errors import Conflict, SQLError
from replidb.node.group_commit import GroupCommit
from replidb.storage import SQLiteStore
from replidb.storage.sqlite_store import WriteOutcome, WriteRequest
from replidb.transport.wire import Statement as S


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "a.db")
    store.execute_write([S("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)")], 1, 1)
    yield store
    store.close()


def _values(store: SQLiteStore) -> list[object]:
    return [row[0] for row in store.execute_read([S("SELECT v FROM t ORDER BY id")])[0].rows]


def test_a_batch_isolates_each_write_and_numbers_those_that_changed_something(
    store: SQLiteStore,
) -> None:
    outcomes = store.execute_batch(
        [
            WriteRequest([S("INSERT INTO t(v) VALUES ('a')")], "c1", 1),
            # fails half-way: its first insert must not survive
            WriteRequest([S("INSERT INTO t(v) VALUES ('half')"), S("INSERT INTO nope VALUES (1)")]),
            WriteRequest([S("UPDATE t SET v = 'z' WHERE id = 999")]),  # changes nothing
            WriteRequest([S("INSERT INTO t(v) VALUES ('a')")]),  # unique violation
            WriteRequest([S("INSERT INTO t(v) VALUES ('b')")], "c2", 1),
            WriteRequest([S("INSERT INTO t(v) VALUES ('a')")], "c1", 1),  # c1's retry
            WriteRequest([S("INSERT INTO t(v) VALUES ('never')")], dry_run=True),
            WriteRequest([S("SELECT count(*) FROM t")], expect="not what was seen"),
        ],
        term=1,
        first_index=2,
    )
    a, half, nothing, unique, b, retry, dry, stale = outcomes
    assert isinstance(a, WriteOutcome) and a.data is not None
    assert isinstance(half, SQLError) and "nope" in str(half)
    assert isinstance(nothing, WriteOutcome) and nothing.data is None
    assert isinstance(unique, Exception) and "UNIQUE" in str(unique)
    assert isinstance(b, WriteOutcome) and b.data is not None
    assert isinstance(retry, WriteOutcome) and retry.duplicate and retry.index == 2
    assert isinstance(dry, WriteOutcome) and dry.data is None
    assert dry.results[0].rowcount == 1
    assert isinstance(stale, Conflict)
    assert _values(store) == ["a", "b"]
    assert [e.index for e in store.entries(2, 10, 1 << 20)] == [2, 3]  # consecutive
    assert store.applied_index() == 3 and store.last_index() == 3


def test_a_batch_that_changes_nothing_logs_nothing(store: SQLiteStore) -> None:
    outcomes = store.execute_batch([WriteRequest([S("DELETE FROM t")])], term=1, first_index=2)
    assert isinstance(outcomes[0], WriteOutcome) and outcomes[0].data is None
    assert store.last_index() == 1 and store.applied_index() == 1


def test_a_batch_survives_reopening(tmp_path: Path, store: SQLiteStore) -> None:
    store.execute_batch(
        [WriteRequest([S("INSERT INTO t(v) VALUES (?)", [str(i)])]) for i in range(5)], 1, 2
    )
    store.close()
    again = SQLiteStore(tmp_path / "a.db")
    try:
        assert _values(again) == ["0", "1", "2", "3", "4"]
        assert again.last_index() == 6 and again.applied_index() == 6
    finally:
        again.close()


def test_requests_of_one_loop_turn_run_as_one_group() -> None:
    asyncio.run(_test_requests_of_one_loop_turn_run_as_one_group())


async def _test_requests_of_one_loop_turn_run_as_one_group() -> None:
    groups: list[list[int]] = []

    def run(items: list[int]) -> list[int | BaseException]:
        groups.append(items)
        return [ValueError("odd") if i % 2 else i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(run, max_size=3)
    tasks = [asyncio.ensure_future(group.submit(i)) for i in range(5)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert groups == [[0, 1, 2], [3, 4]]  # at most max_size each
    assert results[0] == 0 and results[2] == 20 and results[4] == 40
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)
    assert (group.groups, group.items) == (2, 5)
    # A lone request later runs on its own, at once.
    assert await group.submit(6) == 60
    assert groups[-1] == [6]


def test_a_request_abandoned_before_its_group_ran_is_not_run() -> None:
    asyncio.run(_test_a_request_abandoned_before_its_group_ran_is_not_run())


async def _test_a_request_abandoned_before_its_group_ran_is_not_run() -> None:
    ran: list[str] = []

    def run(items: list[str]) -> list[str | BaseException]:
        ran.extend(items)
        return items

    group: GroupCommit[str, str] = GroupCommit(run)
    kept = asyncio.ensure_future(group.submit("kept"))
    gone = asyncio.ensure_future(group.submit("gone"))
    await asyncio.sleep(0)  # both joined the group
    gone.cancel()
    assert await kept == "kept"
    assert ran == ["kept"]


def test_a_failed_group_fails_every_request_in_it() -> None:
    asyncio.run(_test_a_failed_group_fails_every_request_in_it())


async def _test_a_failed_group_fails_every_request_in_it() -> None:
    def run(items: list[int]) -> list[int | BaseException]:
        raise OSError("disk full")

    group: GroupCommit[int, int] = GroupCommit(run)
    results = await asyncio.gather(group.submit(1), group.submit(2), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
