"""Linearizable reads in the pure core (ReadIndex, Raft thesis §6.4): a read is
released only after a majority echoed a round started after it arrived, with the
commit index it arrived at; a leader that cannot reach a majority never releases one,
and one that steps down refuses them."""

from __future__ import annotations

import pytest
from tests.test_core import ELECTION, Node, deliver

from replidb.core import AppendReply, NotLeaderError, ReadState, Role


def _cluster() -> dict[str, Node]:
    nodes = {n: Node(n, check_quorum=True) for n in ("n1", "n2", "n3")}
    deliver(nodes, nodes["n1"].tick(2 * ELECTION))
    assert nodes["n1"].replica.role is Role.LEADER
    return nodes


def _released(node: Node) -> list[ReadState]:
    return [state for ready in node.readies for state in ready.read_states]


def test_a_read_is_released_once_a_majority_echoed_its_round() -> None:
    nodes = _cluster()
    leader = nodes["n1"]
    leader.propose(b"w")
    deliver(nodes, leader.handle())
    commit = leader.replica.commit_index
    leader.replica.request_read(7)
    out = leader.handle()
    assert _released(leader) == []  # not before anyone answered
    to_n2 = [(d, m) for d, m in out if d == "n2"]
    assert to_n2 and all(m.read_round == 1 for _, m in to_n2)  # type: ignore[union-attr]
    deliver(nodes, to_n2)  # n2's echo + the leader itself: 2 of 3
    assert _released(leader) == [ReadState(7, commit)]


def test_a_leader_cut_off_from_the_majority_never_releases_a_read() -> None:
    nodes = _cluster()
    leader = nodes["n1"]
    leader.replica.request_read(1)
    out = leader.handle()
    for _ in range(ELECTION // 2):  # heartbeats go out; nobody answers
        out += leader.tick()
    assert _released(leader) == []
    # Old echoes (an earlier round) do not count either.
    stale = AppendReply(leader.replica.term, "n2", True, leader.replica.last_index, 0)
    leader.step(stale)
    assert _released(leader) == []
    leader.tick(ELECTION)  # check-quorum: it steps down and refuses the read
    assert leader.replica.role is not Role.LEADER
    assert _released(leader) == [ReadState(1, 0)]


def test_a_new_leader_waits_for_its_first_commit() -> None:
    nodes = {n: Node(n) for n in ("n1", "n2", "n3")}
    out = nodes["n1"].tick(2 * ELECTION)
    votes = [(d, m) for d, m in out if d == "n2"]
    replies = [m for d, msg in votes for _, m in nodes[d].step(msg)]
    appends = [sent for reply in replies for sent in nodes["n1"].step(reply)]
    leader = nodes["n1"]  # leader now; its no-op not yet acknowledged
    assert leader.replica.role is Role.LEADER and leader.replica.commit_index == 0
    leader.replica.request_read(3)
    assert leader.handle() == [] and _released(leader) == []  # waits: no round yet
    deliver(nodes, appends)  # the no-op commits, then the round is confirmed
    assert _released(leader) == [ReadState(3, leader.replica.commit_index)]
    assert leader.replica.commit_index > 0


def test_only_a_leader_takes_reads_and_one_voter_needs_no_round() -> None:
    nodes = _cluster()
    with pytest.raises(NotLeaderError):
        nodes["n2"].replica.request_read(1)
    alone = Node("n1", ("n1",))
    alone.tick(2 * ELECTION)
    alone.replica.request_read(5)
    alone.handle()
    assert _released(alone) == [ReadState(5, alone.replica.commit_index)]
