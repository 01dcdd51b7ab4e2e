"""Safety and liveness invariants, checked by the simulator after every step.

The checker keeps one global record: the committed sequence, extended whenever any
node reports a higher commit index. Everything else is checked against it
incrementally (each node has a pointer to how far its log and applied state are known
to match), so a check costs O(nodes) per step rather than O(log length).

Invariants (Raft §5.2-§5.4, plus what replidb adds on top):

1. at most one leader per term, ever (election safety);
2. a committed entry never changes, and a node's log matches it up to the node's own
   commit index; a leader holds every entry committed in an earlier term (leader
   completeness); one ``(term, index)`` never names two different entries;
3. no node discards a committed entry (log truncation or applied rollback);
4. applied states are prefixes of the committed sequence; only a node that has been
   leader may have applied entries beyond it (the leader applies its whole log);
5. convergence (liveness phase): one leader, all commit indexes at its last index,
   identical logs and applied states (learners included) on every member of the
   leader's membership (nodes removed, or never added, are left alone);
6. learners (non-voting members) never leave the follower role (never pre-campaign,
   campaign or lead), never send a vote request, never grant a vote and never hold a
   durable vote. Majorities (the acknowledged-writes rule) count voters only: the
   simulator passes ``acks_must_survive`` computed from the number of voters.

Durable terms never go back and a durable vote never changes within a term. Under a
policy that waits for a majority, an acknowledged write must end up committed.

Under any policy (the ones that may lose acknowledged writes included), a lost write
is never lost silently: an acknowledged write was applied on the leader that
acknowledged it, and if it is missing from the final state it is in that node's
``replidb_discarded`` (``MemoryStorage.discarded``). This is checked when the node
rolls the write back and again on the final state; ``discarded`` never shrinks.

After each step only the nodes the step touched are checked, plus every node when
the committed record grew: a check of an untouched node against an unchanged record
could not find anything new.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

from replidb.core.messages import Entry, HardState, PeerMessage, Role, VoteReply, VoteRequest
from replidb.core.replica import Replica
from replidb.testing.memory import MemoryStorage

__all__ = ["InvariantViolation", "ObservedNode", "SafetyChecker"]


class InvariantViolation(Exception):
    """A safety or liveness property failed; the message says how to replay it."""

    def __init__(self, seed: int, step: int, node: str, detail: str) -> None:
        super().__init__(f"seed={seed} step={step} node={node}: {detail}")
        self.seed = seed
        self.step = step
        self.node = node
        self.detail = detail


class ObservedNode(Protocol):
    """What the checker reads from a simulated node (``replica`` is None while down)."""

    @property
    def id(self) -> str: ...

    @property
    def storage(self) -> MemoryStorage: ...

    @property
    def replica(self) -> Replica | None: ...

    @property
    def settled(self) -> bool:
        """False while input was given whose Ready is not handled yet (mid-batch)."""
        ...


@dataclass
class _Mark:
    log_ok: int = 0  # durable log[1..log_ok] is known to equal the committed record
    applied_ok: int = 0  # applied[1..applied_ok] is known to equal the committed record
    ever_leader: bool = False
    discarded: int = 0  # length of the node's discarded list when last seen


class SafetyChecker:
    def __init__(
        self,
        seed: int,
        node_ids: Sequence[str],
        acks_must_survive: bool,
        learners: Collection[str] = (),
    ) -> None:
        self.seed = seed
        self.learners = frozenset(learners)
        self.step = 0
        self.committed: list[Entry] = []  # committed[i - 1] is the entry committed at i
        # The term of the node that first reported index i committed: every leader of
        # a later term must hold that entry.
        self._commit_term: list[int] = []
        self.leaders: dict[int, str] = {}  # term -> the one leader of that term
        self._entry_ids: dict[tuple[int, int], Entry] = {}
        self._marks = {node: _Mark() for node in node_ids}
        self._acks_must_survive = acks_must_survive
        self.acked: dict[int, Entry] = {}  # index -> the last acknowledged write there
        self.acks = 0
        self.acked_writes: list[tuple[str, Entry]] = []  # (acknowledging node, write)
        # node -> index -> the write this node last acknowledged at that index
        self._acked_on: dict[str, dict[int, Entry]] = {node: {} for node in node_ids}
        # Set by on_truncate, checked by on_truncated: the acknowledged writes the
        # truncation removes, and how long the node's discarded list was before it.
        self._truncating: tuple[str, list[Entry], int] | None = None

    def fail(self, node: str, detail: str) -> NoReturn:
        raise InvariantViolation(self.seed, self.step, node, detail)

    # ---- events reported by the simulator while it handles a Ready -------------

    def observe_role(self, node: str, role: Role, term: int) -> None:
        """(1) one leader per term, ever; (6) a learner is only ever a follower."""
        if role is not Role.FOLLOWER and node in self.learners:
            self.fail(node, f"learner became {role.value} in term {term}")
        if role is not Role.LEADER:
            return
        self._marks[node].ever_leader = True
        holder = self.leaders.setdefault(term, node)
        if holder != node:
            self.fail(node, f"second leader in term {term} (first was {holder})")

    def on_hard_state(self, node: str, old: HardState, new: HardState) -> None:
        if new.term < old.term:
            self.fail(node, f"durable term went back from {old.term} to {new.term}")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            self.fail(node, f"second vote in term {new.term}: {old.vote} then {new.vote}")
        if new.vote is not None and node in self.learners:
            self.fail(node, f"learner voted for {new.vote} in term {new.term}")

    def on_send(self, node: str, to: str, msg: PeerMessage) -> None:
        """(6) a learner neither asks for votes nor grants one (pre-votes included:
        no voter should even ask it)."""
        if node not in self.learners:
            return
        if isinstance(msg, VoteRequest):
            kind = "pre-vote" if msg.pre_vote else "vote"
            self.fail(node, f"learner asked {to} for a {kind} in term {msg.term}")
        if isinstance(msg, VoteReply) and msg.granted:
            kind = "pre-vote" if msg.pre_vote else "vote"
            self.fail(node, f"learner granted {to} its {kind} in term {msg.term}")

    def on_persist(self, node: str, entry: Entry) -> None:
        """(2) a (term, index) pair is created once, by the one leader of that term."""
        known = self._entry_ids.setdefault((entry.term, entry.index), entry)
        if known != entry:
            self.fail(node, f"two different entries at term {entry.term} index {entry.index}")

    def on_truncate(
        self, node: str, from_index: int, entries: Sequence[Entry], storage: MemoryStorage
    ) -> None:
        """(3) called before the storage truncates, with the entries that the same Ready
        appends: no committed entry the node holds may be replaced or dropped.

        (When one Ready covers appends from two leaders, a durable entry can be deleted
        and written back identically; that is not a loss, so compare the net result.)
        """
        mark = self._marks[node]
        first_new = entries[0].index if entries else from_index
        acked_here = self._acked_on[node]
        removed_acks: list[Entry] = []
        for index in range(from_index, len(storage.log) + 1):
            old = storage.log[index - 1]
            held = index <= len(self.committed) and old == self.committed[index - 1]
            offset = index - first_new
            new = entries[offset] if 0 <= offset < len(entries) else None
            if held and new != old:
                self.fail(node, f"truncation from {from_index} discards committed entry {index}")
            if acked_here.get(index) == old:
                removed_acks.append(old)
        self._truncating = (node, removed_acks, len(storage.discarded))
        mark.log_ok = min(mark.log_ok, from_index - 1)  # re-verified from the new entries
        if from_index <= storage.applied_index:
            if not mark.ever_leader:
                self.fail(node, f"rolls back applied entries from {from_index}, never led")
            if from_index <= mark.applied_ok:  # readers would see a committed write vanish
                self.fail(node, f"rolls back committed applied entry {from_index}")
        mark.applied_ok = min(mark.applied_ok, from_index - 1)

    def on_truncated(self, node: str, storage: MemoryStorage) -> None:
        """After the truncation announced by ``on_truncate``: every acknowledged write
        it removed from this node was rolled back into the node's discarded list."""
        assert self._truncating is not None and self._truncating[0] == node
        _, removed_acks, before = self._truncating
        self._truncating = None
        if removed_acks:
            kept = set(storage.discarded[before:])
            for entry in removed_acks:
                if entry not in kept:
                    self.fail(node, f"{self._describe(entry)} rolled back, not kept in discarded")

    def on_ack(self, node: str, entry: Entry, storage: MemoryStorage) -> None:
        """A client was told ``entry`` succeeded. It must be applied on this node (the
        leader executed it), which is what makes ``replidb_discarded`` complete."""
        index = entry.index
        if index > len(storage.applied) or storage.applied[index - 1] != entry:
            self.fail(node, f"{self._describe(entry)} acknowledged but not applied here")
        self.acks += 1
        self.acked_writes.append((node, entry))
        self._acked_on[node][index] = entry
        previous = self.acked.get(entry.index)
        self.acked[entry.index] = entry
        if self._acks_must_survive:
            if previous is not None and previous != entry:
                self.fail(node, f"acknowledged write {previous.data!r} at {entry.index} lost")
            self._check_ack(node, entry.index)

    # ---- after every step --------------------------------------------------------

    def after_step(
        self, nodes: Sequence[ObservedNode], touched: Collection[str] | None = None
    ) -> None:
        """Check the nodes the step ``touched`` (default: all of them); all of them
        anyway if the committed record grew, since they are held against it."""
        before = len(self.committed)
        for node in nodes:
            if touched is None or node.id in touched:
                self._check_node(node)
        grown = len(self.committed) != before
        if grown and touched is not None:
            for node in nodes:
                if node.id not in touched:
                    self._check_node(node)
        for node in nodes:  # the committed record is complete for this step now
            if grown or touched is None or node.id in touched:
                self._check_applied(node)

    def _check_node(self, node: ObservedNode) -> None:
        replica = node.replica
        if replica is not None:
            self.observe_role(node.id, replica.role, replica.term)
            if replica.is_learner and replica.role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
                # (whatever its membership says now: a node only leaves the voters by
                # appending a CONFIG entry, and an Append makes a candidate follow)
                self.fail(node.id, f"non-voter is {replica.role.value} in term {replica.term}")
            if node.settled:  # mid-batch, the durable log lags the replica's view
                self._check_log(node, replica)
        mark = self._marks[node.id]
        discarded = len(node.storage.discarded)
        if discarded < mark.discarded:
            self.fail(node.id, f"discarded list shrank from {mark.discarded} to {discarded}")
        mark.discarded = discarded

    def _check_log(self, node: ObservedNode, replica: Replica) -> None:
        mark = self._marks[node.id]
        log = node.storage.log
        commit = replica.commit_index
        if commit > len(log):
            self.fail(node.id, f"commit index {commit} beyond durable log {len(log)}")
        for index in range(mark.log_ok + 1, commit + 1):  # (2) extend or compare
            self._match_committed(node.id, index, log[index - 1], replica.term)
        mark.log_ok = max(mark.log_ok, commit)
        if replica.role is Role.LEADER:  # leader completeness
            while (
                mark.log_ok < len(self.committed) and self._commit_term[mark.log_ok] < replica.term
            ):
                index = mark.log_ok + 1
                if index > len(log) or log[index - 1] != self.committed[index - 1]:
                    self.fail(node.id, f"leader of term {replica.term} lacks committed {index}")
                mark.log_ok = index

    def _match_committed(self, node: str, index: int, entry: Entry, term: int) -> None:
        if index <= len(self.committed):
            if self.committed[index - 1] != entry:
                self.fail(
                    node,
                    f"committed entry {index} changed: {self.committed[index - 1]!r} vs {entry!r}",
                )
            return
        self.committed.append(entry)
        self._commit_term.append(term)
        if self._acks_must_survive and index in self.acked:
            self._check_ack(node, index)

    def _check_ack(self, node: str, index: int) -> None:
        if index <= len(self.committed) and self.committed[index - 1] != self.acked[index]:
            self.fail(node, f"acknowledged write {self.acked[index].data!r} at {index} lost")

    def _check_applied(self, node: ObservedNode) -> None:
        """(4) applied state = committed prefix, plus a divergent tail only on ex-leaders."""
        mark = self._marks[node.id]
        applied = node.storage.applied
        limit = min(len(applied), len(self.committed))
        while mark.applied_ok < limit:
            if applied[mark.applied_ok] != self.committed[mark.applied_ok]:
                if not mark.ever_leader:
                    self.fail(node.id, f"applied entry {mark.applied_ok + 1} is not committed")
                return  # an ex-leader's uncommitted tail: it must be rolled back later
            mark.applied_ok += 1
        if len(applied) > len(self.committed) and not mark.ever_leader:
            self.fail(node.id, f"applied {len(applied)} beyond commit {len(self.committed)}")

    # ---- liveness ------------------------------------------------------------------

    def _is_committed(self, entry: Entry) -> bool:
        index = entry.index
        return index <= len(self.committed) and self.committed[index - 1] == entry

    @staticmethod
    def _describe(entry: Entry) -> str:
        return f"acknowledged write {entry.data!r} (term {entry.term}, index {entry.index})"

    def lost_acks(self) -> int:
        """Acknowledged writes that are not in the committed sequence (async can lose them)."""
        return sum(1 for _, entry in self.acked_writes if not self._is_committed(entry))

    def check_discarded(self, nodes: Sequence[ObservedNode]) -> None:
        """On the final state (the committed record, once converged): every acknowledged
        write missing from it is in the discarded list of the node that acknowledged it
        — or, if that node has since been removed from the cluster (it no longer hears
        from a leader, so nothing reconciles it), still applied there."""
        storage = {node.id: node.storage for node in nodes}
        leaders = [n.replica for n in nodes if n.replica and n.replica.role is Role.LEADER]
        members = set(leaders[0].membership.members) if len(leaders) == 1 else set(storage)
        kept: dict[str, set[Entry]] = {}
        for node, entry in self.acked_writes:
            if self._is_committed(entry):
                continue
            if node not in kept:
                kept[node] = set(storage[node].discarded)
                if node not in members:
                    kept[node].update(storage[node].applied)
            if entry not in kept[node]:
                self.fail(
                    node,
                    f"{self._describe(entry)} is missing from the final state "
                    f"and not in {node}'s replidb_discarded",
                )

    @staticmethod
    def not_converged(nodes: Sequence[ObservedNode]) -> str | None:
        """(5) None when the cluster has converged, else what is still missing."""
        down = [n.id for n in nodes if n.replica is None]
        if down:
            return f"nodes down: {down}"
        leaders = [n for n in nodes if n.replica is not None and n.replica.role is Role.LEADER]
        if len(leaders) != 1:
            return f"{len(leaders)} leaders"
        leader = leaders[0]
        assert leader.replica is not None
        last = leader.replica.last_index
        members = set(leader.replica.membership.members)
        if leader.replica.membership_index > leader.replica.commit_index:
            return "a membership change is not committed yet"
        for node in nodes:
            if node.id not in members:
                continue
            replica = node.replica
            assert replica is not None
            if replica.term != leader.replica.term or replica.leader != leader.id:
                return f"{node.id} follows {replica.leader} in term {replica.term}"
            if replica.commit_index != last:
                return f"{node.id} commit {replica.commit_index} != leader last {last}"
            if node.storage.log != leader.storage.log:
                return f"{node.id} log differs from the leader's"
            if node.storage.applied != leader.storage.applied:
                return f"{node.id} applied state differs from the leader's"
        return None
