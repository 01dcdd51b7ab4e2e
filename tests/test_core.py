"""Unit tests of the pure core: messages in, Ready batches out, no I/O.

A tiny harness plays the caller's side of the Ready contract against MemoryStorage;
messages are handed from node to node explicitly, so every test decides exactly what
is delivered, dropped or forged.
"""

from __future__ import annotations

import random

import pytest

from replidb.core import (
    Append,
    AppendReply,
    CommitPolicy,
    Config,
    Entry,
    EntryKind,
    HardState,
    NotLeaderError,
    PeerMessage,
    Ready,
    Replica,
    Role,
    RoleChanged,
    VoteReply,
    VoteRequest,
    parse_policy,
)
from replidb.testing import MemoryStorage

ELECTION = 10
IDS = ("n1", "n2", "n3")


class Node:
    """One replica plus its storage; ``handle`` follows the Ready contract in order."""

    def __init__(
        self,
        node_id: str,
        ids: tuple[str, ...] = IDS,
        *,
        storage: MemoryStorage | None = None,
        seed: int = 0,
        policy: CommitPolicy | None = None,
        max_batch_entries: int = 256,
        pre_vote: bool = False,
        check_quorum: bool = False,
        learners: tuple[str, ...] = (),
    ) -> None:
        self.id = node_id
        self.storage = storage or MemoryStorage()
        self.config = Config(
            node_id,
            tuple(i for i in ids if i != node_id),
            election_ticks=ELECTION,
            heartbeat_ticks=1,
            max_batch_entries=max_batch_entries,
            policy=policy or CommitPolicy("async"),
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            learners=learners,
        )
        self.replica = Replica(
            self.config,
            self.storage,
            self.storage.hard_state,
            self.storage.applied_index,
            random.Random(seed),
        )
        self.readies: list[Ready] = []

    def handle(self) -> list[tuple[str, PeerMessage]]:
        """Drain every Ready; returns the messages to send (as (to, message))."""
        out: list[tuple[str, PeerMessage]] = []
        while self.replica.has_ready():
            ready = self.replica.ready()
            self.readies.append(ready)
            if ready.hard_state is not None:
                self.storage.save_hard_state(ready.hard_state)
            if ready.truncate_from is not None:
                self.storage.truncate(ready.truncate_from)
            self.storage.append(ready.entries)
            out.extend(ready.messages)
            for entry in ready.committed:
                self.storage.apply(entry)
            self.replica.advance(ready)
        return out

    def step(self, msg: PeerMessage) -> list[tuple[str, PeerMessage]]:
        self.replica.step(msg)
        return self.handle()

    def tick(self, times: int = 1) -> list[tuple[str, PeerMessage]]:
        out: list[tuple[str, PeerMessage]] = []
        for _ in range(times):
            self.replica.tick()
            out.extend(self.handle())
        return out

    def propose(self, data: bytes) -> Entry:
        """The caller's side of a write: log + apply atomically, then tell the core."""
        replica = self.replica
        entry = Entry(replica.term, replica.next_index(), EntryKind.WRITE, data)
        self.storage.write_applied(entry)
        assert replica.propose_applied(data) == entry
        return entry

    def restart(self) -> None:
        self.replica = Replica(
            self.config,
            self.storage,
            self.storage.hard_state,
            self.storage.applied_index,
            random.Random(1),
        )


def storage_with(entries: list[tuple[int, int]], term: int) -> MemoryStorage:
    storage = MemoryStorage()
    storage.append([Entry(t, i, EntryKind.WRITE, b"x%d" % i) for t, i in entries])
    storage.save_hard_state(HardState(term, None))
    return storage


def to(node: str, out: list[tuple[str, PeerMessage]]) -> list[PeerMessage]:
    return [msg for dest, msg in out if dest == node]


def deliver(
    nodes: dict[str, Node], out: list[tuple[str, PeerMessage]], drop: tuple[str, ...] = ()
) -> None:
    """A perfect network: deliver everything, and everything it causes, in order
    (except to ``drop``, and to nodes not in ``nodes``)."""
    queue = list(out)
    while queue:
        dest, msg = queue.pop(0)
        if dest not in drop and dest in nodes:
            queue.extend(nodes[dest].step(msg))


def campaign(node: Node) -> list[tuple[str, PeerMessage]]:
    for _ in range(2 * ELECTION):
        out = node.tick()
        if node.replica.role is Role.CANDIDATE:
            return out
    raise AssertionError("no election within 2 * election_ticks")


def elect(nodes: dict[str, Node], leader: str) -> None:
    deliver(nodes, campaign(nodes[leader]))
    assert nodes[leader].replica.role is Role.LEADER


def cluster(policy: CommitPolicy | None = None) -> dict[str, Node]:
    return {i: Node(i, seed=n, policy=policy) for n, i in enumerate(IDS)}


# ---- elections ----------------------------------------------------------------------


def test_election_needs_a_majority_and_then_appends_a_noop() -> None:
    n1, n2 = Node("n1"), Node("n2")
    out = campaign(n1)
    assert n1.readies[-1].hard_state == HardState(1, "n1")  # the self-vote is durable
    assert to("n2", out) == to("n3", out) == [VoteRequest(1, "n1", 0, 0)]
    replies = n2.step(to("n2", out)[0])
    assert n2.storage.hard_state == HardState(1, "n1")  # vote persisted before the reply
    assert replies == [("n1", VoteReply(1, "n2", True))]
    before = len(n1.readies)
    out = n1.step(replies[0][1])  # n3 never answers: 2 of 3 is enough
    assert n1.replica.role is Role.LEADER
    ready = n1.readies[before]
    assert ready.events == (RoleChanged(Role.LEADER, 1, "n1"),)
    assert ready.entries == (Entry(1, 1, EntryKind.NOOP),)
    assert {dest for dest, msg in out if isinstance(msg, Append)} == {"n2", "n3"}


def test_one_vote_is_not_a_majority_of_five() -> None:
    ids = ("n1", "n2", "n3", "n4", "n5")
    n1 = Node("n1", ids)
    campaign(n1)
    n1.step(VoteReply(1, "n2", True))
    n1.step(VoteReply(1, "n2", True))  # a duplicate reply is not a second vote
    n1.step(VoteReply(1, "n3", False))
    assert n1.replica.role is Role.CANDIDATE
    n1.step(VoteReply(1, "n4", True))
    assert n1.replica.role.value == "leader"  # (.value: mypy narrowed role above)


def test_vote_refused_to_a_candidate_with_a_stale_log() -> None:
    n2 = Node("n2", storage=storage_with([(1, 1), (2, 2)], term=2))
    # Higher term but older last entry: the term is adopted, the vote refused.
    out = n2.step(VoteRequest(3, "n1", last_index=5, last_term=1))
    assert out == [("n1", VoteReply(3, "n2", False))]
    assert n2.storage.hard_state == HardState(3, None)
    # Same last term but a shorter log: refused too.
    assert n2.step(VoteRequest(3, "n3", 1, 2)) == [("n3", VoteReply(3, "n2", False))]
    # At least as up to date: granted.
    assert n2.step(VoteRequest(3, "n3", 2, 2)) == [("n3", VoteReply(3, "n2", True))]


def test_one_vote_per_term_survives_a_restart() -> None:
    n3 = Node("n3")
    assert n3.step(VoteRequest(1, "n1", 0, 0)) == [("n1", VoteReply(1, "n3", True))]
    assert n3.step(VoteRequest(1, "n2", 0, 0)) == [("n2", VoteReply(1, "n3", False))]
    # A retransmitted request from the same candidate gets the same answer.
    assert n3.step(VoteRequest(1, "n1", 0, 0)) == [("n1", VoteReply(1, "n3", True))]
    n3.restart()
    assert n3.step(VoteRequest(1, "n2", 0, 0)) == [("n2", VoteReply(1, "n3", False))]
    # A new term frees the vote.
    assert n3.step(VoteRequest(2, "n2", 0, 0)) == [("n2", VoteReply(2, "n3", True))]


def test_leader_refuses_votes_in_its_term_and_steps_down_for_a_higher_one() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    n1 = nodes["n1"]
    assert n1.step(VoteRequest(1, "n2", 5, 1)) == [("n2", VoteReply(1, "n1", False))]
    n1.step(VoteRequest(2, "n2", 5, 1))
    assert n1.replica.role is Role.FOLLOWER and n1.replica.term == 2


def test_heartbeats_reset_the_election_timer() -> None:
    follower = Node("n2")
    for tick in range(20 * ELECTION):
        if tick % 5 == 0:
            follower.step(Append(1, "n1", 0, 0, (), 0))
        follower.tick()
        assert follower.replica.role is Role.FOLLOWER
    assert follower.replica.leader == "n1"
    # Without heartbeats it campaigns within the largest timeout.
    campaign(follower)
    assert follower.replica.term == 2


def test_randomized_timeouts_are_deterministic_given_the_seed() -> None:
    def ticks_to_campaign(seed: int) -> int:
        node = Node("n1", seed=seed)
        for ticks in range(1, 2 * ELECTION + 1):
            node.tick()
            if node.replica.role is Role.CANDIDATE:
                return ticks
        raise AssertionError("never campaigned")

    timeouts = [ticks_to_campaign(seed) for seed in range(40)]
    assert timeouts == [ticks_to_campaign(seed) for seed in range(40)]
    assert all(ELECTION <= t < 2 * ELECTION for t in timeouts)
    assert len(set(timeouts)) > 3  # actually randomized, so split votes resolve


# ---- replication: follower side ------------------------------------------------------


def test_append_refused_when_the_previous_entry_does_not_match() -> None:
    n2 = Node("n2", storage=storage_with([(1, 1), (1, 2)], term=1))
    # prev_index beyond the log: refused, hint = our last index.
    assert n2.step(Append(1, "n1", 5, 1, (Entry(1, 6),), 0)) == [
        ("n1", AppendReply(1, "n2", False, 2))
    ]
    # prev_index present but with another term: refused, log untouched.
    out = n2.step(Append(2, "n1", 2, 2, (Entry(2, 3),), 0))
    assert out == [("n1", AppendReply(2, "n2", False, 0))]  # skip the whole term-1 run
    assert n2.storage.last_index() == 2
    assert all(not ready.entries for ready in n2.readies)
    # A stale leader is refused outright and learns the newer term.
    assert n2.step(Append(1, "n3", 2, 1, (), 0)) == [("n3", AppendReply(2, "n2", False, 0))]
    # The matching position is accepted.
    assert n2.step(Append(2, "n1", 2, 1, (Entry(2, 3),), 0)) == [
        ("n1", AppendReply(2, "n2", True, 3))
    ]
    assert [e.term for e in n2.storage.log] == [1, 1, 2]


def test_conflicting_suffix_is_truncated_but_a_matching_one_is_kept() -> None:
    n2 = Node("n2", storage=storage_with([(1, 1), (1, 2), (1, 3)], term=1))
    # A stale (reordered) append whose entries all match truncates nothing.
    n2.step(Append(1, "n1", 0, 0, (Entry(1, 1, EntryKind.WRITE, b"x1"),), 0))
    assert all(ready.truncate_from is None for ready in n2.readies)
    assert n2.storage.last_index() == 3
    out = n2.step(Append(2, "n3", 1, 1, (Entry(2, 2),), 0))
    ready = n2.readies[-1]
    assert ready.truncate_from == 2 and ready.entries == (Entry(2, 2),)
    assert [(e.term, e.index) for e in n2.storage.log] == [(1, 1), (2, 2)]
    assert out == [("n3", AppendReply(2, "n2", True, 2))]


def test_ex_leader_rolls_back_applied_but_uncommitted_writes() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    n1 = nodes["n1"]
    assert n1.replica.commit_index == 1  # the no-op reached n2 and n3
    n1.propose(b"w1")
    n1.propose(b"w2")  # applied on the leader, never replicated
    n1.handle()  # (its Appends are dropped)
    assert n1.replica.applied_index == 3 and n1.storage.applied_index == 3
    # A newer leader holds something else at index 2.
    out = n1.step(Append(2, "n2", 1, 1, (Entry(2, 2, EntryKind.NOOP),), 1))
    assert n1.replica.role is Role.FOLLOWER
    assert n1.readies[-1].truncate_from == 2
    assert n1.replica.applied_index == 1
    assert [e.data for e in n1.storage.applied] == [b""]  # w1 and w2 rolled back
    assert out == [("n2", AppendReply(2, "n1", True, 2))]


def test_follower_never_truncates_at_or_below_its_commit_index() -> None:
    n2 = Node("n2", storage=storage_with([(1, 1), (1, 2)], term=1))
    n2.step(Append(1, "n1", 2, 1, (), 2))
    assert n2.replica.commit_index == 2
    with pytest.raises(AssertionError, match="overwrite committed"):
        n2.replica.step(Append(2, "n3", 1, 1, (Entry(2, 2),), 2))


# ---- replication: leader side ----------------------------------------------------------


def test_commit_counts_a_majority_only_for_current_term_entries() -> None:
    # n1 holds an entry of term 2 that never committed (Raft figure 8).
    n1 = Node("n1", storage=storage_with([(1, 1), (2, 2)], term=2))
    campaign(n1)
    n1.step(VoteReply(3, "n2", True))
    assert n1.replica.role is Role.LEADER and n1.replica.last_index == 3
    # n2 now stores index 2: a majority has it, but it is from term 2.
    n1.step(AppendReply(3, "n2", True, 2))
    assert n1.replica.match_index("n2") == 2
    assert n1.replica.commit_index == 0
    # Once our own no-op (term 3) is on a majority, everything up to it commits.
    n1.step(AppendReply(3, "n2", True, 3))
    assert n1.replica.commit_index == 3


def test_commit_index_propagates_to_followers() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    n1 = nodes["n1"]
    entry = n1.propose(b"w1")
    deliver(nodes, n1.handle())
    assert n1.replica.commit_index == entry.index == 2
    # The followers learn the new commit index with the next append or heartbeat.
    deliver(nodes, n1.tick())
    for node in nodes.values():
        assert node.replica.commit_index == 2
        assert node.storage.applied == n1.storage.applied
        assert [e.data for e in node.storage.applied] == [b"", b"w1"]


def test_follower_commit_is_capped_by_what_the_append_verified() -> None:
    n2 = Node("n2", storage=storage_with([(1, 1), (1, 2), (1, 3)], term=1))
    # The leader says commit=3 but only verifies our log up to index 1.
    n2.step(Append(1, "n1", 1, 1, (), 3))
    assert n2.replica.commit_index == 1


def test_only_a_caught_up_leader_takes_writes() -> None:
    n1 = Node("n1")
    with pytest.raises(NotLeaderError):
        n1.replica.propose_applied(b"w")
    campaign(n1)
    n1.replica.step(VoteReply(1, "n2", True))
    assert n1.replica.role is Role.LEADER
    assert not n1.replica.can_propose()  # its no-op is not durable yet
    n1.handle()
    assert n1.replica.can_propose()


def test_a_lost_batch_is_sent_again_when_the_cluster_is_idle() -> None:
    """Regression (sim seeds 14, 18): after the in-flight timeout the leader only sent
    heartbeats, so the last write was never re-sent until another write arrived."""
    nodes = cluster()
    elect(nodes, "n1")
    n1 = nodes["n1"]
    entry = n1.propose(b"w1")
    n1.handle()  # the Appends carrying w1 are lost
    resent = [
        dest for dest, msg in n1.tick(ELECTION) if isinstance(msg, Append) and entry in msg.entries
    ]
    assert sorted(set(resent)) == ["n2", "n3"]


def test_a_heartbeat_reply_does_not_start_a_second_batch() -> None:
    """Regression (sim seed 175): every heartbeat reply to a lagging follower used to
    start one more pipeline of batches (unbounded messages and memory)."""
    storage = storage_with([(1, i) for i in range(1, 7)], term=1)
    n1 = Node("n1", storage=storage, max_batch_entries=2)
    campaign(n1)
    n1.step(VoteReply(2, "n2", True))  # n2's log is empty
    out = n1.step(AppendReply(2, "n2", False, 0))  # the first probe is refused
    assert [msg.entries[-1].index for msg in to("n2", out) if isinstance(msg, Append)] == [2]
    # The reply to a heartbeat (prev = match = 0) arrives while that batch is in flight.
    out = n1.step(AppendReply(2, "n2", True, 0))
    assert not [msg for msg in to("n2", out) if isinstance(msg, Append) and msg.entries]
    # The batch's own reply moves the pipeline on, one batch at a time.
    out = n1.step(AppendReply(2, "n2", True, 2))
    batches = [msg for msg in to("n2", out) if isinstance(msg, Append) and msg.entries]
    assert [(b.prev_index, len(b.entries)) for b in batches] == [(2, 2)]


# ---- commit policies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("async", 9),
        ("quorum", 4),
        ("semi-sync:1", 7),
        ("semi-sync:2", 2),
        ("semi-sync:3", 0),
        ("all", 2),
    ],
)
def test_policy_acked_index(policy: str, expected: int) -> None:
    # leader durable at 9, commit 4, followers hold 7 and 2
    assert parse_policy(policy).acked_index(9, 4, [2, 7]) == expected


def test_parse_policy() -> None:
    assert parse_policy(" Semi-Sync:2 ") == CommitPolicy("semi-sync", 2)
    assert str(parse_policy("semi-sync:2")) == "semi-sync:2"
    for bad in ("semi-sync:0", "semi-sync:x", "sync", ""):
        with pytest.raises(ValueError):
            parse_policy(bad)


@pytest.mark.parametrize(
    ("policy", "before_reply", "after_reply"),
    [("async", 2, 2), ("quorum", 1, 2), ("semi-sync:1", 1, 2), ("all", 1, 1)],
)
def test_leader_acknowledges_by_policy(policy: str, before_reply: int, after_reply: int) -> None:
    nodes = cluster(policy=parse_policy(policy))
    elect(nodes, "n1")  # the no-op (index 1) is on all three nodes
    n1 = nodes["n1"]
    n1.propose(b"w1")
    n1.handle()  # its Appends are not delivered ...
    assert n1.readies[-1].acked_index == before_reply
    n1.step(AppendReply(1, "n2", True, 2))  # ... except that n2 stored w1
    assert n1.readies[-1].acked_index == after_reply
