"""Membership changes in the pure core: one node at a time, in force from the moment
the CONFIG entry is appended (and reverted if it is truncated), learners promoted only
once caught up, a leader that removes itself hands over, a removed member is told."""

from __future__ import annotations

import pytest
from tests.test_core import ELECTION, IDS, Node, deliver

from replidb.core import (
    Append,
    Entry,
    EntryKind,
    NotLeaderError,
    PeerMessage,
    Role,
    VoteRequest,
)
from replidb.core.membership import (
    ConfigHistory,
    Membership,
    MembershipBusy,
    encode_membership,
)
from replidb.core.messages import TimeoutNow

ALL = (*IDS, "n4")


def _cluster() -> dict[str, Node]:
    """n1 leads n2 and n3; n4 runs but is not a member (as ``serve --join`` starts it)."""
    nodes = {n: Node(n) for n in IDS}
    nodes["n4"] = Node("n4", ALL, learners=("n4",))
    deliver(nodes, nodes["n1"].tick(2 * ELECTION))
    assert nodes["n1"].replica.role is Role.LEADER
    deliver(nodes, nodes["n1"].tick())
    return nodes


def _change(nodes: dict[str, Node], new: Membership, drop: tuple[str, ...] = ()) -> Entry:
    leader = nodes["n1"]
    entry = leader.replica.propose_membership(new)
    deliver(nodes, leader.handle(), drop)
    return entry


def test_memberships_change_one_node_at_a_time() -> None:
    base = Membership(("n1", "n2", "n3"))
    added = base.with_learner("n4", "127.0.0.1:7104")
    assert added.learners == ("n4",) and added.address("n4") == "127.0.0.1:7104"
    assert base.describe_change(added) == "add n4 as a learner"
    assert added.describe_change(added.promoted("n4")) == "promote n4 to voter"
    assert base.describe_change(base.without("n2")) == "remove n2"
    with pytest.raises(ValueError, match="one membership change at a time"):
        base.describe_change(Membership(("n1",)))
    with pytest.raises(ValueError, match="must join as a learner before it can vote"):
        base.describe_change(Membership(("n1", "n2", "n3", "n4")))
    with pytest.raises(ValueError, match="demotion is a removal"):
        base.describe_change(Membership(("n1", "n2"), ("n3",)))
    with pytest.raises(ValueError, match="already a member"):
        base.with_learner("n2")
    with pytest.raises(ValueError, match="last voter"):
        Membership(("n1",)).without("n1")
    with pytest.raises(ValueError, match="add it as a learner first"):
        base.promoted("n9")


def test_history_reverts_a_truncated_change() -> None:
    history = ConfigHistory(0, Membership(("n1",)))
    history.add(5, Membership(("n1",), ("n2",)))
    history.add(9, Membership(("n1", "n2")))
    assert history.at(4).learners == () and history.at(7).learners == ("n2",)
    assert history.truncate(9) and history.latest.voters == ("n1",)
    assert not history.truncate(20)
    assert history.truncate(1) and history.latest_index == 0  # never the base


def test_a_learner_is_promoted_only_once_caught_up_and_then_counts() -> None:
    nodes = _cluster()
    leader = nodes["n1"].replica
    base = leader.membership
    # Added while unreachable: it is a learner everywhere but holds nothing yet.
    _change(nodes, base.with_learner("n4"), drop=("n4",))
    assert leader.membership.learners == ("n4",)
    assert nodes["n2"].replica.membership.learners == ("n4",)
    with pytest.raises(MembershipBusy, match="n4 is not caught up yet"):
        leader.propose_membership(leader.membership.promoted("n4"))
    for _ in range(ELECTION):  # the lost batch is sent again; n4 catches up
        deliver(nodes, nodes["n1"].tick())
    assert nodes["n4"].storage.applied_index == leader.commit_index
    assert nodes["n4"].replica.is_learner and nodes["n4"].replica.role is Role.FOLLOWER
    _change(nodes, leader.membership.promoted("n4"))
    for node in nodes.values():
        assert node.replica.membership.voters == ALL
    assert not nodes["n4"].replica.is_learner
    # Four voters: the leader and n4 (2 of 4) cannot commit; with n2 as well they can.
    commit = leader.commit_index
    nodes["n1"].propose(b"needs three")
    deliver(nodes, nodes["n1"].handle(), drop=("n2", "n3"))
    assert leader.commit_index == commit
    for _ in range(ELECTION):  # (n2's lost batch is sent again)
        deliver(nodes, nodes["n1"].tick(), drop=("n3",))
    assert leader.commit_index == leader.last_index


def test_one_change_at_a_time_and_not_before_the_leader_committed() -> None:
    nodes = _cluster()
    leader = nodes["n1"].replica
    leader.propose_membership(leader.membership.with_learner("n4"))
    with pytest.raises(MembershipBusy, match="another membership change"):
        leader.propose_membership(leader.membership.without("n2"))
    # A new leader must commit an entry of its own term first.
    nodes["n1"].handle()  # (nothing delivered: the change stays uncommitted)
    n2, n3 = nodes["n2"], nodes["n3"]
    requests = [m for to, m in n2.tick(3 * ELECTION) if to == "n3"]
    for request in requests:
        for _, reply in n3.step(request):
            n2.step(reply)  # its appends (and so its commit) are not delivered
    assert n2.replica.role is Role.LEADER
    with pytest.raises(MembershipBusy, match="has not committed an entry yet"):
        n2.replica.propose_membership(n2.replica.membership.without("n1"))


def test_a_leader_that_removes_itself_hands_over_once_committed() -> None:
    nodes = _cluster()
    leader = nodes["n1"].replica
    entry = leader.propose_membership(leader.membership.without("n1"))
    out = nodes["n1"].handle()
    assert leader.role is Role.LEADER  # until the removal commits, without counting itself
    sent: list[tuple[str, PeerMessage]] = []
    queue = list(out)
    while queue:
        dest, msg = queue.pop(0)
        if dest == "n1":
            reply = nodes["n1"].step(msg)
            sent.extend(reply)
            queue.extend(reply)
        elif dest in nodes:
            queue.extend(nodes[dest].step(msg))
    assert leader.commit_index >= entry.index
    assert leader.role is Role.FOLLOWER and not leader.is_member
    handover = [(to, m) for to, m in sent if isinstance(m, TimeoutNow)]
    assert len(handover) == 1 and handover[0][0] in ("n2", "n3")
    new = nodes[handover[0][0]].replica
    assert new.role is Role.LEADER and new.membership.voters == ("n2", "n3")
    # The removed node never campaigns again.
    assert not [m for _, m in nodes["n1"].tick(5 * ELECTION) if isinstance(m, VoteRequest)]


def test_a_removed_member_is_told_and_the_change_survives_a_restart() -> None:
    nodes = _cluster()
    _change(nodes, nodes["n1"].replica.membership.without("n3"))
    n3 = nodes["n3"]
    assert not n3.replica.is_member  # it got the entry that removed it
    assert not [m for _, m in n3.tick(5 * ELECTION) if isinstance(m, VoteRequest)]
    n3.restart()  # read back from its log
    assert n3.replica.membership.voters == ("n1", "n2") and not n3.replica.is_member
    nodes["n1"].restart()
    assert nodes["n1"].replica.membership.voters == ("n1", "n2")


def test_a_truncated_change_is_undone() -> None:
    nodes = _cluster()
    n2 = nodes["n2"]
    stale = Membership(("n1", "n2", "n3"), ("n4",))
    last = n2.replica.last_index
    term = n2.replica.term
    # An entry from a leader of this term that never committed, then replaced.
    config = Entry(term, last + 1, EntryKind.CONFIG, encode_membership(stale))
    n2.step(Append(term, "n1", last, term, (config,), n2.replica.commit_index))
    assert n2.replica.membership.learners == ("n4",)
    newer = Entry(term + 1, last + 1, EntryKind.NOOP)
    n2.step(Append(term + 1, "n3", last, term, (newer,), n2.replica.commit_index))
    assert n2.replica.membership.learners == ()
    assert n2.replica.membership_index == 0


def test_a_leader_removing_itself_takes_no_more_writes_and_always_hands_over() -> None:
    """Writes after its own removal would sit behind the change in its log; refused,
    the log ends at the change, so once it commits a voter holds all of it and gets
    the TimeoutNow."""
    nodes = _cluster()
    n1 = nodes["n1"]
    entry = n1.replica.propose_membership(n1.replica.membership.without("n1"))
    assert not n1.replica.can_propose()
    with pytest.raises(NotLeaderError):
        n1.replica.propose_applied(b"too late")
    replies = [(to, m) for dest, msg in n1.handle() for to, m in nodes[dest].step(msg)]
    out = [sent for _, reply in replies for sent in n1.step(reply)]
    assert n1.replica.commit_index == entry.index == n1.replica.last_index
    assert n1.replica.role is Role.FOLLOWER
    assert len([to for to, m in out if isinstance(m, TimeoutNow)]) == 1
