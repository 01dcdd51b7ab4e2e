"""Election hardening in the pure core: pre-vote, check-quorum, leader lease, transfer."""

from __future__ import annotations

from replidb.core import Role, VoteReply, VoteRequest
from replidb.core.messages import TimeoutNow
from test_core import ELECTION, IDS, Node, deliver, to


def cluster(**options: bool) -> dict[str, Node]:
    return {
        node: Node(node, seed=i, pre_vote=True, check_quorum=True, **options)
        for i, node in enumerate(IDS)
    }


def elect(nodes: dict[str, Node], node: str) -> None:
    """Tick ``node`` until its election timer fires, delivering everything perfectly."""
    for _ in range(3 * ELECTION):
        deliver(nodes, nodes[node].tick())
        if nodes[node].replica.role is Role.LEADER:
            return
    raise AssertionError(f"{node} did not become leader")


def heartbeat(nodes: dict[str, Node], leader: str, times: int = 1) -> None:
    for _ in range(times):
        deliver(nodes, nodes[leader].tick())


def test_pre_vote_comes_first_and_changes_no_term() -> None:
    nodes = cluster()
    out: list[tuple[str, object]] = []
    for _ in range(3 * ELECTION):
        out = nodes["n1"].tick()  # type: ignore[assignment]
        if nodes["n1"].replica.role is not Role.FOLLOWER:
            break
    assert nodes["n1"].replica.role is Role.PRE_CANDIDATE
    assert nodes["n1"].replica.term == 0  # not raised yet
    requests = [m for _, m in out if isinstance(m, VoteRequest)]
    assert requests and all(m.pre_vote and m.term == 1 for m in requests)
    reply = nodes["n2"].step(requests[0])
    assert nodes["n2"].replica.term == 0 and nodes["n2"].replica.vote is None
    assert to("n1", reply) == [VoteReply(1, "n2", True, pre_vote=True)]
    nodes["n1"].step(to("n1", reply)[0])  # a majority would vote: now campaign for real
    assert nodes["n1"].replica.role is Role.CANDIDATE and nodes["n1"].replica.term == 1


def test_a_node_back_from_a_partition_cannot_depose_a_healthy_leader() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    term = nodes["n1"].replica.term

    def among(allowed: set[str], out: list[tuple[str, object]], sender: str) -> None:
        deliver(nodes, [(d, m) for d, m in out if {d, sender} <= allowed])  # type: ignore[misc]

    # n3 is cut off: its timer fires again and again while n1 and n2 carry on.
    for _ in range(5 * ELECTION):
        nodes["n3"].tick()
        among({"n1", "n2"}, nodes["n1"].tick(), "n1")
        among({"n1", "n2"}, nodes["n2"].tick(), "n2")
    assert nodes["n3"].replica.role is Role.PRE_CANDIDATE
    assert nodes["n3"].replica.term == term  # pre-votes never raised it
    # Healed: n3's next pre-vote is refused (n1 and n2 hear from their leader), and
    # n1's heartbeat brings n3 back as a follower, in the same term.
    everyone = set(IDS)
    for _ in range(3 * ELECTION):
        among(everyone, nodes["n3"].tick(), "n3")
        among(everyone, nodes["n1"].tick(), "n1")
        among(everyone, nodes["n2"].tick(), "n2")
    assert [nodes[n].replica.term for n in IDS] == [term] * 3
    assert nodes["n1"].replica.role is Role.LEADER
    assert nodes["n3"].replica.leader == "n1"


def test_a_leader_cut_off_from_the_majority_steps_down() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1", 2)
    leader = nodes["n1"]
    for _ in range(2 * ELECTION + 1):
        leader.tick()  # its heartbeats and their replies are all lost
    assert leader.replica.role is Role.FOLLOWER
    assert not leader.replica.can_propose()


def test_a_leader_that_hears_from_a_majority_stays() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    for _ in range(4 * ELECTION):
        out = nodes["n1"].tick()
        # n3 is down; n2 answers.
        deliver(nodes, [(d, m) for d, m in out if d == "n2"])
    assert nodes["n1"].replica.role is Role.LEADER


def test_leader_lease_ignores_a_disruptive_vote_request() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    term = nodes["n2"].replica.term
    out = nodes["n2"].step(VoteRequest(term + 5, "n3", 100, term + 4))
    assert out == [] and nodes["n2"].replica.term == term


def test_transfer_hands_leadership_to_the_target_without_losing_writes() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    written = nodes["n1"].propose(b"before transfer")
    nodes["n1"].replica.transfer_leadership("n2")
    assert not nodes["n1"].replica.can_propose()  # no writes while handing over
    out = nodes["n1"].handle()
    deliver(nodes, out)
    heartbeat(nodes, "n1")  # whatever was still needed
    assert nodes["n2"].replica.role is Role.LEADER
    assert nodes["n1"].replica.role is Role.FOLLOWER
    assert nodes["n2"].storage.term(written.index) == written.term


def test_transfer_sends_timeout_now_only_once_the_target_is_caught_up() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    nodes["n1"].propose(b"n3 has not got this yet")
    nodes["n1"].replica.transfer_leadership("n3")
    out = nodes["n1"].handle()
    assert not any(isinstance(m, TimeoutNow) for _, m in out)
    replies = nodes["n3"].step(to("n3", out)[-1])
    out = nodes["n1"].step(to("n1", replies)[0])
    assert [m for _, m in out if isinstance(m, TimeoutNow)] == [
        TimeoutNow(nodes["n1"].replica.term, "n1")
    ]


def test_an_unfinished_transfer_is_abandoned_after_an_election_timeout() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    nodes["n1"].replica.transfer_leadership("n3")
    for _ in range(ELECTION):
        out = nodes["n1"].tick()
        deliver(nodes, [(d, m) for d, m in out if d == "n2"])  # n3 unreachable
    assert nodes["n1"].replica.transferee is None
    assert nodes["n1"].replica.can_propose()


def test_a_closed_leader_connection_brings_the_election_forward() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    # n1 dies; both followers see its connection close.
    for node in ("n2", "n3"):
        nodes[node].replica.leader_unreachable()
    ticks = 0
    while nodes["n2"].replica.role is Role.FOLLOWER and nodes["n3"].replica.role is Role.FOLLOWER:
        ticks += 1
        for node in ("n2", "n3"):
            out = nodes[node].tick()
            deliver(nodes, [(d, m) for d, m in out if d != "n1"])
    assert ticks <= 1 + ELECTION // 4  # not a whole election timeout
    for _ in range(ELECTION):
        for node in ("n2", "n3"):
            deliver(nodes, [(d, m) for d, m in nodes[node].tick() if d != "n1"])
    assert {nodes["n2"].replica.role, nodes["n3"].replica.role} == {Role.LEADER, Role.FOLLOWER}


def test_a_closed_connection_to_a_live_leader_causes_no_election() -> None:
    nodes = cluster()
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    term = nodes["n1"].replica.term
    nodes["n2"].replica.leader_unreachable()  # a spurious disconnect, n1 is fine
    for _ in range(3 * ELECTION):
        for node in IDS:
            deliver(nodes, nodes[node].tick())
    assert [nodes[n].replica.term for n in IDS] == [term] * 3
    assert nodes["n1"].replica.role is Role.LEADER


def with_learner() -> dict[str, Node]:
    ids = (*IDS, "n4")
    return {
        node: Node(node, ids, seed=i, pre_vote=True, check_quorum=True, learners=("n4",))
        for i, node in enumerate(ids)
    }


def test_a_learner_receives_the_log_but_never_campaigns_or_is_asked_to_vote() -> None:
    nodes = with_learner()
    for _ in range(10 * ELECTION):  # the learner's timer never starts an election
        assert nodes["n4"].tick() == []
    assert nodes["n4"].replica.role is Role.FOLLOWER and nodes["n4"].replica.term == 0
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    entry = nodes["n1"].propose(b"to everyone")
    heartbeat(nodes, "n1", 2)
    assert nodes["n4"].storage.applied_index >= entry.index  # it applies like a follower
    # A campaigning voter asks the other voters only: the learner's vote would not count.
    nodes["n2"].replica._elapsed = 10 * ELECTION
    asked = [to for to, m in nodes["n2"].tick() if isinstance(m, VoteRequest)]
    assert asked and "n4" not in asked
    # (A candidate that has seen the learner promoted does ask it; it answers by the
    # usual rules then, or elections could deadlock: sim --membership seed 10.)


def test_learners_count_for_no_majority() -> None:
    # Two voters and a learner: if the learner counted, n1 + n3 would be 2 of 3.
    nodes = {
        node: Node(node, IDS, seed=i, pre_vote=True, check_quorum=True, learners=("n3",))
        for i, node in enumerate(IDS)
    }
    elect(nodes, "n1")
    heartbeat(nodes, "n1")
    commit = nodes["n1"].replica.commit_index
    nodes["n1"].propose(b"needs the other voter")
    for _ in range(2 * ELECTION):  # n2 is down; only the learner answers
        out = nodes["n1"].tick()
        deliver(nodes, [(d, m) for d, m in out if d == "n3"])
    assert nodes["n3"].replica.log.last_index > commit  # the learner has the entry...
    assert nodes["n1"].replica.commit_index == commit  # ...which still did not commit
    assert nodes["n1"].replica.role is Role.FOLLOWER  # and check-quorum ignored it too
