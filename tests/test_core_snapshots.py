"""The core's side of log compaction and snapshots: a leader offers a snapshot to a
follower its retained log cannot serve, keeps it counted for check-quorum while it
fetches, and resumes from the log once the follower installed one; a follower whose
log already matches at the compaction point needs none."""

from __future__ import annotations

from tests.test_core import ELECTION, Node

from replidb.core import Append, AppendReply, PeerMessage, Role
from replidb.core.messages import SnapshotOffer


def _deliver(
    nodes: dict[str, Node], sender: str, out: list[tuple[str, PeerMessage]], drop: str = ""
) -> None:
    """Deliver everything, breadth first, except to ``drop``."""
    queue = [(sender, to, msg) for to, msg in out]
    while queue:
        _, to, msg = queue.pop(0)
        if to == drop or to not in nodes:
            continue
        queue.extend((to, nxt_to, nxt) for nxt_to, nxt in nodes[to].step(msg))


def _cluster(check_quorum: bool = False) -> dict[str, Node]:
    nodes = {i: Node(i, check_quorum=check_quorum) for i in ("n1", "n2", "n3")}
    _deliver(nodes, "n1", nodes["n1"].tick(2 * ELECTION))
    assert nodes["n1"].replica.role is Role.LEADER
    return nodes


def _write(nodes: dict[str, Node], count: int, drop: str = "") -> None:
    leader = nodes["n1"]
    for i in range(count):
        leader.propose(f"w{i}".encode())
        _deliver(nodes, "n1", leader.handle(), drop=drop)


def _n3_behind_a_compacted_log() -> tuple[dict[str, Node], Node, Node, int]:
    """n3 missed 10 writes that the leader has since compacted away."""
    nodes = _cluster()
    _write(nodes, 3)
    _write(nodes, 10, drop="n3")
    leader, n3 = nodes["n1"], nodes["n3"]
    commit = leader.replica.commit_index
    leader.storage.compact(commit - 2)
    return nodes, leader, n3, commit


def _install(leader: Node, follower: Node, commit: int) -> None:
    """The caller's side: install the leader's committed prefix, then tell the core."""
    follower.storage.install_snapshot(leader.storage.log[:commit], leader.storage.applied[:commit])
    follower.replica.restore_snapshot(
        commit, leader.storage.log[commit - 1].term, leader.replica.membership_at(commit)
    )


def test_a_follower_behind_the_compacted_log_is_offered_a_snapshot() -> None:
    nodes = _cluster()
    _write(nodes, 3)
    _write(nodes, 10, drop="n3")  # n3 misses these
    leader = nodes["n1"]
    commit = leader.replica.commit_index
    leader.storage.compact(commit - 2)
    out = leader.tick()  # the heartbeat to n3 becomes an offer
    offers = [(to, m) for to, m in out if isinstance(m, SnapshotOffer)]
    appends_to_n3 = [m for to, m in out if to == "n3" and isinstance(m, Append)]
    assert [to for to, _ in offers] == ["n3"] and not appends_to_n3
    offer = offers[0][1]
    assert offer.first_index == commit - 1
    n3 = nodes["n3"]
    replies = n3.step(offer)
    assert n3.readies[-1].snapshot_from == "n1"  # asks its caller to fetch
    assert replies == [("n1", AppendReply(offer.term, "n3", False, 0))]
    assert leader.step(replies[0][1]) == []  # still fetching: nothing re-sent
    # The caller installs the leader's committed prefix, then tells the core.
    _install(leader, n3, commit)
    ack = n3.handle()
    assert ack == [("n1", AppendReply(offer.term, "n3", True, commit))]
    _deliver(nodes, "n3", ack)
    _write(nodes, 2)
    _deliver(nodes, "n1", leader.tick())  # a heartbeat carries the last commit index
    assert n3.storage.applied == leader.storage.applied
    assert n3.replica.commit_index == leader.replica.commit_index


def test_a_follower_whose_log_matches_at_the_compaction_point_needs_no_snapshot() -> None:
    nodes = _cluster()
    _write(nodes, 6)
    leader, n2 = nodes["n1"], nodes["n2"]
    leader.storage.compact(leader.replica.commit_index)
    base = leader.storage.first_index() - 1
    offer = SnapshotOffer(leader.replica.term, "n1", base + 1, leader.storage.term(base))
    replies = n2.step(offer)
    assert all(r.snapshot_from is None for r in n2.readies)
    assert replies == [("n1", AppendReply(offer.term, "n2", True, base))]


def test_a_fetching_follower_still_counts_for_check_quorum() -> None:
    nodes = _cluster(check_quorum=True)
    _write(nodes, 3)
    _write(nodes, 5, drop="n3")
    leader = nodes["n1"]
    leader.storage.compact(leader.replica.commit_index)
    # n2 goes silent; n3 only ever answers offers (it never installs anything).
    for _ in range(3 * ELECTION):
        for to, msg in leader.tick():
            if to == "n3":
                for _, reply in nodes["n3"].step(msg):
                    leader.step(reply)
    assert leader.replica.role is Role.LEADER  # n1 + n3 are a majority of 3


def test_a_follower_skips_entries_below_its_own_compaction_point() -> None:
    nodes = _cluster()
    _write(nodes, 8)
    n2, leader = nodes["n2"], nodes["n1"]
    n2.storage.compact(n2.replica.commit_index)
    stale = Append(
        leader.replica.term,
        "n1",
        0,
        0,
        tuple(leader.storage.log[:3]),
        leader.replica.commit_index,
    )
    before = list(n2.storage.applied)
    replies = n2.step(stale)
    assert replies == [("n1", AppendReply(stale.term, "n2", True, 3))]
    assert n2.storage.applied == before  # nothing rolled back or redone


def test_a_late_offer_after_an_install_asks_for_nothing() -> None:
    _, leader, n3, commit = _n3_behind_a_compacted_log()
    offer = next(m for to, m in leader.tick() if to == "n3" and isinstance(m, SnapshotOffer))
    n3.step(offer)
    _install(leader, n3, commit)
    n3.handle()
    fetches = sum(1 for r in n3.readies if r.snapshot_from)
    assert n3.step(offer) == [("n1", AppendReply(offer.term, "n3", True, commit))]
    assert sum(1 for r in n3.readies if r.snapshot_from) == fetches  # no second fetch


def test_refusals_of_old_offers_arriving_after_the_install_start_no_batches() -> None:
    """Offers pile up while a follower fetches; its refusals of them can arrive after
    its success. Each used to start one more batch (30 in flight on a sim seed)."""
    nodes, leader, n3, commit = _n3_behind_a_compacted_log()
    offers = [m for to, m in leader.tick(3) if to == "n3" and isinstance(m, SnapshotOffer)]
    refusals = [m for offer in offers for _, m in n3.step(offer)]
    assert len(refusals) == 3 and not any(r.success for r in refusals)
    _install(leader, n3, commit)
    (ack,) = [m for _, m in n3.handle()]
    leader.step(ack)  # back to the log
    _write(nodes, 2, drop="n3")  # one batch in flight to n3, not yet delivered
    late = [m for refusal in refusals for to, m in leader.step(refusal) if to == "n3"]
    assert late == []  # (without the check: three more batches of the same entries)
    assert leader.replica.match_index("n3") == commit


def test_a_fetched_snapshot_is_not_wanted_where_the_log_already_holds_its_entry() -> None:
    nodes = _cluster()
    _write(nodes, 5)
    n2 = nodes["n2"].replica
    index = n2.last_index
    term = n2.log.term(index)
    n2.commit_index = index - 2  # (commit lags: a newer leader had not told it yet)
    assert not n2.wants_snapshot(index, term)  # entries after it may be acknowledged
    assert n2.wants_snapshot(index, term + 1)  # a different history: install
    assert not n2.wants_snapshot(index - 2, term)  # not newer than the commit
    assert n2.wants_snapshot(index + 5, term)  # beyond our log
