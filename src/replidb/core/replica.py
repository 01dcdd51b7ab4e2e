"""The single-leader replica: a pure, deterministic state machine (Raft's rules).

Inputs: ``step(message)``, ``tick()``, ``propose_applied(data)``. Output: one ``Ready``
batch at a time, which the caller handles in this order and then ``advance``s:

1. persist ``hard_state``, then ``truncate_from`` / ``entries`` (durably: fsync);
2. send ``messages``;
3. apply ``committed`` entries in order (recording the applied index atomically);
4. answer client writes at or below ``acked_index``.

Rules this module owns (and nothing else changes these fields):

- Terms fence everything: a message with a higher term turns us into a follower of
  that term first; a message with a lower term is refused (appends) or ignored.
- Votes: one per term, durable before the reply leaves. A vote is granted only to a
  candidate whose log is at least as up to date (last term, then last index).
- A candidate needs a majority of voters (itself included). Election timeouts are
  drawn uniformly from [election_ticks, 2 * election_ticks) with the injected Random.
- Pre-vote (Raft thesis §9.6): a node whose timer fires first asks, without raising
  its term, whether a majority would vote for it; only then does it campaign. A node
  returning from a partition therefore cannot depose a healthy leader.
- Check-quorum (§6.2): a leader that has not heard from a majority within an election
  timeout steps down (and stops acknowledging writes); a node that has heard from a
  leader within the election timeout ignores vote requests for a higher term (the
  leader lease), unless the leader itself asked for the election (a transfer).
- Learners (non-voting members, named in ``Config.learners``) receive the log and
  apply it like any follower, but never campaign, are never asked for a vote, and
  count for no majority (commit, elections, check-quorum, semi-sync): read replicas
  and partial followers, that can never become leader.
- Membership changes (``core/membership.py`` has the rules): CONFIG entries in the
  log, in force from the moment they are appended; one change at a time. Messages
  from nodes outside our membership are still answered (a new member may lead before
  we have seen the entry that added it); only members count for any majority.
- Linearizable reads (ReadIndex, §6.4): ``request_read`` notes the commit index
  (once the leader has committed an entry of its term) and starts a read round that
  every Append carries and every reply echoes; when a majority of voters has echoed
  the round, the read is released in ``Ready.read_states`` with that index: the
  caller answers once it has applied up to it. A leader that steps down releases its
  pending reads with index 0 (refused).
- Leadership transfer (§3.10): the leader stops taking writes, brings the target up
  to date, and sends it TimeoutNow; the target campaigns at once. A transfer that has
  not finished within an election timeout is abandoned.
- Leader: appends a no-op in its term, replicates with the previous-entry consistency
  check (one batch in flight per follower: a slow follower costs bounded memory),
  advances ``commit`` to the highest index stored on a majority *whose term is the
  current one*, and applies its whole log (it executes new writes on top of it).
- Follower: truncates a conflicting suffix (never at or below ``commit``), appends,
  applies up to ``commit``.
- Applied-but-uncommitted entries exist only on leaders; if a deposed leader must
  truncate them, ``applied_index`` drops and ``Ready.truncate_from`` tells the caller
  to roll those transactions back.
- Snapshots: the caller compacts its log (``LogReader.first_index``) up to committed
  entries only. A leader that no longer holds the entries a follower needs sends it a
  ``SnapshotOffer`` (and keeps sending it in place of heartbeats) instead of appends;
  the follower asks its caller to fetch one (``Ready.snapshot_from``) unless its own
  log already matches the leader's at the compaction point, and answers every offer,
  so check-quorum still counts it. Once the caller has installed the snapshot it calls
  ``restore_snapshot``; the follower acknowledges that position and replication
  resumes from the log. A follower treats entries at or below its own compaction point
  as matching: they are committed, so every leader holds the same ones.

No I/O, no clock, no global randomness; peers are iterated in sorted order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from replidb.core.log import LogReader, LogView
from replidb.core.membership import (
    ConfigHistory,
    Membership,
    MembershipBusy,
    decode_membership,
    encode_membership,
)
from replidb.core.messages import (
    Append,
    AppendReply,
    Entry,
    EntryKind,
    HardState,
    PeerMessage,
    Role,
    RoleChanged,
    SnapshotOffer,
    TimeoutNow,
    VoteReply,
    VoteRequest,
)
from replidb.core.policy import CommitPolicy

__all__ = ["Config", "NotLeaderError", "ReadState", "Ready", "Replica"]


class NotLeaderError(Exception):
    """Raised by propose_applied when this replica cannot take a write right now."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


@dataclass(frozen=True)
class Config:
    node_id: str
    peers: tuple[str, ...]  # the other voters
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_batch_entries: int = 256
    max_batch_bytes: int = 1 << 20
    max_apply_entries: int = 1024
    policy: CommitPolicy = field(default_factory=lambda: CommitPolicy("async"))
    pre_vote: bool = True
    check_quorum: bool = True
    learners: tuple[str, ...] = ()  # non-voting members (may include this node)

    def bootstrap_membership(self) -> Membership:
        """The membership before the log says otherwise (no CONFIG entry yet)."""
        learners = set(self.learners)
        members = {self.node_id, *self.peers}
        return Membership(tuple(sorted(members - learners)), tuple(sorted(learners & members)))


@dataclass(frozen=True)
class ReadState:
    """A linearizable read may be served once the caller has applied up to ``index``;
    ``index`` 0: refused (this node stopped leading before it was confirmed)."""

    ctx: int
    index: int


@dataclass(frozen=True)
class Ready:
    hard_state: HardState | None
    truncate_from: int | None
    entries: tuple[Entry, ...]
    messages: tuple[tuple[str, PeerMessage], ...]
    committed: tuple[Entry, ...]
    acked_index: int
    events: tuple[RoleChanged, ...]
    # A follower behind the leader's compacted log: fetch a snapshot from this node.
    snapshot_from: str | None = None
    read_states: tuple[ReadState, ...] = ()


@dataclass
class _Progress:
    """The leader's view of one follower."""

    match: int = 0
    next: int = 1
    inflight: bool = False
    inflight_ticks: int = 0
    idle_ticks: int = 0  # leader ticks since this follower last answered
    snapshot: bool = False  # behind our compacted log: offered a snapshot instead
    # Removed from the membership by the CONFIG entry at this index: it still gets the
    # log until it holds that entry (so it learns it was removed and stops
    # campaigning), but counts for nothing.
    departed_at: int = 0
    read_round: int = 0  # the newest read round it has echoed


class Replica:
    def __init__(
        self,
        config: Config,
        log: LogReader,
        hard_state: HardState,
        applied_index: int,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self.log = LogView(log)
        self._configs = ConfigHistory(0, config.bootstrap_membership())
        for entry in log.configs():
            self._configs.add(entry.index, decode_membership(entry.data))
        self._progress: dict[str, _Progress] = {}
        self.transferee: str | None = None  # leader: handing leadership to this node
        self.peers: tuple[str, ...] = ()  # every other member (set by _use_membership)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.role = Role.FOLLOWER
        self._use_membership()
        self.leader: str | None = None
        self.applied_index = applied_index
        # Not durable: a restarted ex-leader may have applied entries that never
        # committed, so we relearn the commit index from the next leader. Only what was
        # compacted is known committed. (From 0, a restarted leader whose follower
        # needed a snapshot could offer none below its compaction point, and the
        # follower could not help it commit: sim --membership seed 125.)
        self.commit_index = self.log.first_index - 1
        # The highest commit index a leader has announced: how far behind we are.
        self.leader_commit = 0
        self._rng = rng
        self._elapsed = 0
        self._timeout = self._random_timeout()
        self._votes: set[str] = set()
        self._messages: list[tuple[str, PeerMessage]] = []
        self._events: list[RoleChanged] = []
        self._hard_dirty = False
        # Annotated: mypy narrows ``self.leader`` to None here, inferred the tuple type
        # from that and rejected every later assignment (mypy --strict failed).
        self._reported: tuple[Role, int, str | None] = (self.role, self.term, self.leader)
        self._acked = 0
        self._transfer_elapsed = 0
        self._snapshot_from: str | None = None  # follower: fetch a snapshot from here
        # Linearizable reads (leader): rounds, reads waiting for their round or for a
        # commit in our term, and released ones; (follower) the round to echo.
        self._read_round = 0
        self._reads_in_round: list[tuple[int, int, int]] = []  # (ctx, index, round)
        self._reads_before_commit: list[int] = []
        self._read_states: list[ReadState] = []
        self._echo_round = 0

    # ---- inputs ---------------------------------------------------------------

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self._elapsed += 1
        if self._elapsed >= self._timeout and not self.is_learner:
            if self.config.pre_vote:
                self._pre_campaign()
            else:
                self._campaign()

    def _tick_leader(self) -> None:
        self._elapsed += 1
        for progress in self._progress.values():
            progress.idle_ticks += 1
            if progress.inflight:
                progress.inflight_ticks += 1
        if self.config.check_quorum:
            # A sliding window: step down as soon as a majority has been silent for a
            # whole election timeout (fixed rounds took up to two timeouts: found by
            # tests/test_netns_partitions.py).
            limit = self.config.election_ticks
            active = {p for p in self.voter_peers if self._progress[p].idle_ticks < limit}
            if not self._has_quorum(active | {self.id}):
                self._become_follower(self.term, None)  # cut off: stop taking writes
                return
        if self.transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_ticks:
                self.transferee = None  # the target did not take over in time
        if self._elapsed >= self.config.heartbeat_ticks:
            self._elapsed = 0
            self._broadcast(heartbeat=True)

    def step(self, msg: PeerMessage) -> None:
        if msg.sender == self.id:
            return
        if msg.term > self.term:
            if isinstance(msg, VoteRequest):
                if not msg.transfer and self._in_lease():
                    return  # a leader we heard from recently is alive: don't be disrupted
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif not (isinstance(msg, VoteReply) and msg.pre_vote and msg.granted):
                # (a granted pre-vote carries the proposed term, not a newer real one)
                leader = (
                    msg.sender if isinstance(msg, Append | TimeoutNow | SnapshotOffer) else None
                )
                self._become_follower(msg.term, leader)
        if isinstance(msg, VoteRequest):
            self._on_vote_request(msg)
        elif isinstance(msg, VoteReply):
            self._on_vote_reply(msg)
        elif isinstance(msg, Append):
            self._on_append(msg)
        elif isinstance(msg, TimeoutNow):
            if msg.term == self.term and self.role is Role.FOLLOWER:
                self._campaign(transfer=True)
        elif isinstance(msg, SnapshotOffer):
            self._on_snapshot_offer(msg)
        else:
            self._on_append_reply(msg)

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to ``target``: stop taking writes, catch it up, TimeoutNow."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if target not in self.voter_peers:
            raise ValueError(f"{target!r} is not another voter of this cluster")
        self.transferee = target
        self._transfer_elapsed = 0
        self._advance_transfer()

    def _advance_transfer(self) -> None:
        target = self.transferee
        if target is None:
            return
        progress = self._progress[target]
        if progress.match == self.log.last_index and not self.log.unstable:
            self._messages.append((target, TimeoutNow(self.term, self.id)))
        elif not progress.inflight:
            self._send_append(target)

    def leader_unreachable(self) -> None:
        """The caller saw the connection to our leader close (its process died, most
        likely): stop trusting the leader's lease and campaign within a quarter of an
        election timeout instead of a whole one. Safe either way — elections are; if
        the leader is in fact alive, the other voters still in its lease refuse us."""
        if self.role is not Role.FOLLOWER or self.leader is None or self.is_learner:
            return
        base = self.config.election_ticks
        self._elapsed = base
        self._timeout = base + 1 + self._rng.randrange(max(1, base // 4))

    def _in_lease(self) -> bool:
        """Heard from a live leader within the election timeout (check-quorum only)."""
        if not self.config.check_quorum or self.leader is None:
            return False
        return self.role is Role.LEADER or self._elapsed < self.config.election_ticks

    def propose_applied(self, data: bytes) -> Entry:
        """Record a write the caller has already executed and persisted atomically with
        its log row at ``next_index()``. Only a caught-up leader may do this."""
        if not self.can_propose():
            raise NotLeaderError(None if self.role is Role.LEADER else self.leader)
        entry = Entry(self.term, self.log.last_index + 1, EntryKind.WRITE, data)
        self.log.append_durable(entry)
        self.applied_index = entry.index
        self._maybe_commit()
        self._send_to_idle()
        return entry

    def restore_snapshot(self, index: int, term: int, membership: Membership) -> None:
        """The caller installed a snapshot at ``index`` (term ``term``, ``membership``
        in force there): its log now starts after it and its state machine is at it.
        Acknowledge it to the leader."""
        self.log.restore(index)
        assert self.log.term(index) == term, "the caller's log does not start at the snapshot"
        self._configs.reset(index, membership)
        self._use_membership()
        self.commit_index = max(self.commit_index, index)
        self.leader_commit = max(self.leader_commit, index)
        self.applied_index = index
        if self.role is Role.FOLLOWER and self.leader is not None:
            self._reply_append(self.leader, True, index)
        self._snapshot_from = None

    def propose_membership(self, new: Membership) -> Entry:
        """Leader: append a CONFIG entry changing the membership to ``new`` (one step;
        ValueError says why not). In force at once; the caller waits for its commit."""
        if self.role is not Role.LEADER or self.transferee is not None:
            raise NotLeaderError(None if self.role is Role.LEADER else self.leader)
        if self._configs.latest_index > self.commit_index:
            raise MembershipBusy("another membership change is still being committed")
        if self.log.term(self.commit_index) != self.term:
            raise MembershipBusy("the new leader has not committed an entry yet")
        self.membership.describe_change(new)
        promoted = set(new.voters) - set(self.membership.voters)
        for node in promoted:
            match = self._progress[node].match
            if match < self.commit_index:
                raise MembershipBusy(
                    f"{node} is not caught up yet (it holds {match} of {self.commit_index})"
                )
        entry = Entry(self.term, self.log.last_index + 1, EntryKind.CONFIG, encode_membership(new))
        self._append([entry])
        self._send_to_idle()
        return entry

    def request_read(self, ctx: int) -> None:
        """Leader: confirm leadership for a linearizable read (see the module rules);
        ``ctx`` comes back in ``Ready.read_states``."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.log.term(self.commit_index) != self.term:
            self._reads_before_commit.append(ctx)  # the commit index is not ours yet
            return
        self._start_reads([ctx])

    def _start_reads(self, contexts: list[int]) -> None:
        self._read_round += 1
        for ctx in contexts:
            self._reads_in_round.append((ctx, self.commit_index, self._read_round))
        if self._has_quorum({self.id}):
            self._release_reads(self._read_round)
        else:
            self._broadcast(heartbeat=True)

    def _release_reads(self, confirmed: int) -> None:
        keep = []
        for ctx, index, round_ in self._reads_in_round:
            if round_ <= confirmed:
                self._read_states.append(ReadState(ctx, index))
            else:
                keep.append((ctx, index, round_))
        self._reads_in_round = keep

    def _on_read_round(self) -> None:
        """A voter echoed a newer round: release the reads a majority has confirmed."""
        if not self._reads_in_round:
            return
        rounds = sorted(
            [self._read_round if self.id in self.voters else 0]
            + [self._progress[p].read_round for p in self.voter_peers],
            reverse=True,
        )
        self._release_reads(rounds[len(self.voters) // 2])

    def wants_snapshot(self, index: int, term: int) -> bool:
        """Should the caller install a snapshot it fetched at ``index`` (``term``)? Not
        if it is not newer than what we know committed, nor if our log already holds
        that entry: the entries after it may be ones we acknowledged to a newer leader
        while the fetch ran, and dropping them could lose a committed write (Raft §7:
        keep the log that follows a matching snapshot point)."""
        if index <= self.commit_index:
            return False
        return not (
            self.log.first_index - 1 <= index <= self.log.last_index
            and self.log.term(index) == term
        )

    def membership_at(self, index: int) -> Membership:
        """The membership in force at ``index`` (for a snapshot taken there)."""
        return self._configs.at(index)

    @property
    def membership_index(self) -> int:
        """Index of the CONFIG entry the current membership comes from (0: bootstrap)."""
        return self._configs.latest_index

    # ---- queries --------------------------------------------------------------

    def can_propose(self) -> bool:
        """A leader whose whole log is durable and applied (so new SQL runs on top of it)."""
        return (
            self.role is Role.LEADER
            and self.transferee is None
            # A leader removing itself takes no more writes: they would follow the
            # change in its log, and it hands over once the change commits.
            and self.id in self.voters
            and not self.log.unstable
            and self.log.truncate_from is None
            and self.applied_index == self.log.last_index
        )

    def next_index(self) -> int:
        return self.log.last_index + 1

    @property
    def last_index(self) -> int:
        return self.log.last_index

    def match_index(self, peer: str) -> int:
        progress = self._progress.get(peer)
        return progress.match if progress else 0

    def snapshot_peers(self) -> list[str]:
        """Leader: the followers being offered a snapshot (behind our retained log)."""
        return sorted(p for p, progress in self._progress.items() if progress.snapshot)

    def has_ready(self) -> bool:
        return bool(
            self._hard_dirty
            or self.log.unstable
            or self.log.truncate_from is not None
            or self._messages
            or self._events
            or self._apply_bound() > self.applied_index
            or self._compute_acked() != self._acked
            or self._reported != (self.role, self.term, self.leader)
            or self._snapshot_from is not None
            or bool(self._read_states)
        )

    # ---- output ---------------------------------------------------------------

    def ready(self) -> Ready:
        now = (self.role, self.term, self.leader)
        if now != self._reported:
            self._events.append(RoleChanged(*now))
            self._reported = now
        bound = min(self._apply_bound(), self.applied_index + self.config.max_apply_entries)
        committed = tuple(
            self.log.slice(self.applied_index + 1, bound, 1 << 62)
            if bound > self.applied_index
            else ()
        )
        self._acked = self._compute_acked()
        return Ready(
            hard_state=HardState(self.term, self.vote) if self._hard_dirty else None,
            truncate_from=self.log.truncate_from,
            entries=tuple(self.log.unstable),
            messages=tuple(self._messages),
            committed=committed,
            acked_index=self._acked,
            events=tuple(self._events),
            snapshot_from=self._snapshot_from,
            read_states=tuple(self._read_states),
        )

    def advance(self, ready: Ready) -> None:
        if ready.hard_state is not None:
            self._hard_dirty = False
        self.log.mark_stable(ready.entries, ready.truncate_from)
        del self._messages[: len(ready.messages)]
        del self._events[: len(ready.events)]
        del self._read_states[: len(ready.read_states)]
        if ready.snapshot_from is not None and ready.snapshot_from == self._snapshot_from:
            self._snapshot_from = None  # reported once per offer; the caller fetches
        if ready.committed:
            self.applied_index = max(self.applied_index, ready.committed[-1].index)
        if self.role is Role.LEADER:
            self._maybe_commit()  # our own durable index may have moved

    # ---- membership -------------------------------------------------------------

    def _append(self, entries: list[Entry]) -> None:
        """Append to the log, bringing CONFIG entries into force (and dropping those
        the append truncates, so the membership before them applies again)."""
        if not entries:
            return
        changed = self._configs.truncate(entries[0].index)
        for entry in entries:
            if entry.kind == EntryKind.CONFIG:
                self._configs.add(entry.index, decode_membership(entry.data))
                changed = True
        self.log.append(entries)
        if changed:
            self._use_membership()

    def _use_membership(self) -> None:
        membership = self._configs.latest
        self.membership = membership
        before = set(self.peers)
        self.peers = tuple(n for n in membership.members if n != self.id)
        self.voters = frozenset(membership.voters)
        self.voter_peers = tuple(p for p in self.peers if p in self.voters)
        self.is_learner = self.id not in self.voters  # (or not a member at all)
        self.is_member = self.id in membership.members
        if self.role is Role.LEADER:
            for peer in self.peers:
                if peer not in before or peer not in self._progress:
                    # Fresh, even for a node removed and added back: it may have been
                    # wiped meanwhile, and an old match would never be lowered.
                    self._progress[peer] = _Progress(match=0, next=self.log.last_index + 1)
            for peer, progress in self._progress.items():
                if peer not in self.peers and not progress.departed_at:
                    progress.departed_at = self._configs.latest_index
        if self.transferee is not None and self.transferee not in self.voter_peers:
            self.transferee = None

    def _step_down_if_removed(self) -> None:
        """A leader whose removal (as a voter) has committed hands over and steps down."""
        if self.id in self.voters or self._configs.latest_index > self.commit_index:
            return
        best = max(self.voter_peers, key=lambda p: self._progress[p].match, default=None)
        if best is not None and self._progress[best].match == self.log.last_index:
            self._messages.append((best, TimeoutNow(self.term, self.id)))
        self._become_follower(self.term, None)

    # ---- roles ----------------------------------------------------------------

    def _random_timeout(self) -> int:
        base = self.config.election_ticks
        return base + self._rng.randrange(base)

    def _become_follower(self, term: int, leader: str | None) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
            self._hard_dirty = True
        self.role = Role.FOLLOWER
        self.leader = leader
        self._votes = set()
        self._progress = {}
        self._echo_round = 0
        # Reads not yet confirmed can no longer be: refuse them.
        pending = [ctx for ctx, _, _ in self._reads_in_round] + self._reads_before_commit
        self._read_states.extend(ReadState(ctx, 0) for ctx in pending)
        self._reads_in_round, self._reads_before_commit = [], []
        self._elapsed = 0
        self._timeout = self._random_timeout()
        self.transferee = None
        if self._snapshot_from != leader:
            self._snapshot_from = None

    def _pre_campaign(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {self.id}
        self._elapsed = 0
        self._timeout = self._random_timeout()
        if self._has_quorum(self._votes):
            self._campaign()
            return
        request = VoteRequest(
            self.term + 1, self.id, self.log.last_index, self.log.last_term, pre_vote=True
        )
        for peer in self.voter_peers:
            self._messages.append((peer, request))

    def _campaign(self, transfer: bool = False) -> None:
        self.term += 1
        self.vote = self.id
        self._hard_dirty = True
        self.role = Role.CANDIDATE
        self.leader = None
        self._votes = {self.id}
        self._elapsed = 0
        self._timeout = self._random_timeout()
        if self._has_quorum(self._votes):
            self._become_leader()
            return
        request = VoteRequest(
            self.term, self.id, self.log.last_index, self.log.last_term, transfer=transfer
        )
        for peer in self.voter_peers:
            self._messages.append((peer, request))

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader = self.id
        self._elapsed = 0
        last = self.log.last_index
        self._progress = {peer: _Progress(match=0, next=last + 1) for peer in self.peers}
        # Entries of earlier terms commit only once an entry of ours does (Raft §5.4.2).
        self._append([Entry(self.term, last + 1, EntryKind.NOOP)])
        self._broadcast(heartbeat=False)

    def _has_quorum(self, nodes: set[str]) -> bool:
        """Do ``nodes`` include a majority of the voters?"""
        return len(nodes & self.voters) * 2 > len(self.voters)

    # ---- votes ----------------------------------------------------------------

    def _on_vote_request(self, msg: VoteRequest) -> None:
        up_to_date = (msg.last_term, msg.last_index) >= (self.log.last_term, self.log.last_index)
        # One vote per term; none for a term in which we already follow a leader. A
        # node answers whatever its own membership says: a candidate asks only the
        # voters of its membership, which may be newer than ours (a promotion we have
        # not received) — refusing there deadlocked elections (sim --membership seed
        # 10). Safety rests on one durable vote per term and the up-to-date check.
        free = self.vote == msg.sender or (self.vote is None and self.leader is None)
        if msg.pre_vote:
            # Only a question: grant for a future term, never change our own state.
            granted = up_to_date and (msg.term > self.term or (msg.term == self.term and free))
            reply_term = msg.term if granted else self.term
            self._messages.append((msg.sender, VoteReply(reply_term, self.id, granted, True)))
            return
        granted = msg.term == self.term and free and up_to_date
        if granted:
            if self.vote != msg.sender:
                self.vote = msg.sender
                self._hard_dirty = True
            self._elapsed = 0  # we just helped start an election: give it time
        self._messages.append((msg.sender, VoteReply(self.term, self.id, granted)))

    def _on_vote_reply(self, msg: VoteReply) -> None:
        if msg.pre_vote:
            if self.role is Role.PRE_CANDIDATE and msg.granted and msg.term == self.term + 1:
                self._votes.add(msg.sender)
                if self._has_quorum(self._votes):
                    self._campaign()
            return
        if self.role is not Role.CANDIDATE or msg.term != self.term or not msg.granted:
            return
        self._votes.add(msg.sender)
        if self._has_quorum(self._votes):
            self._become_leader()

    # ---- replication: follower side -------------------------------------------

    def _accept_leader(self, msg: Append | SnapshotOffer) -> bool:
        """A message from a leader: refuse a stale one; otherwise follow its sender and
        restart the election timer."""
        if msg.term < self.term:
            self._messages.append((msg.sender, AppendReply(self.term, self.id, False, 0)))
            return False
        if self.role is not Role.FOLLOWER or self.leader != msg.sender:
            self._become_follower(msg.term, msg.sender)
        self._elapsed = 0
        return True

    def _on_append(self, msg: Append) -> None:
        if not self._accept_leader(msg):
            return
        self._echo_round = max(self._echo_round, msg.read_round)
        base = self.log.first_index - 1
        if msg.prev_index < base:
            # Entries up to ``base`` were compacted here, after they committed: every
            # leader holds the same ones. Skip to our compaction point.
            last_sent = msg.prev_index + len(msg.entries)
            rest = tuple(e for e in msg.entries if e.index > base)
            if not rest:
                self._commit_to(msg.commit, min(last_sent, base))
                self._reply_append(msg.sender, True, last_sent)
                return
            msg = Append(
                msg.term, msg.sender, base, self.log.term(base), rest, msg.commit, msg.read_round
            )
        if msg.prev_index > self.log.last_index:
            self._reply_append(msg.sender, False, self.log.last_index)
            return
        if self.log.term(msg.prev_index) != msg.prev_term:
            self._reply_append(msg.sender, False, self._conflict_hint(msg.prev_index))
            return
        new: list[Entry] = []
        for position, entry in enumerate(msg.entries):
            if entry.index > self.log.last_index or self.log.term(entry.index) != entry.term:
                new = list(msg.entries[position:])
                break
        if new:
            if new[0].index <= self.commit_index:
                raise AssertionError(
                    f"{self.id}: leader {msg.sender} would overwrite committed index "
                    f"{new[0].index} (commit {self.commit_index})"
                )
            if new[0].index <= self.applied_index:
                self.applied_index = new[0].index - 1  # caller rolls these back
            self._append(new)
        last_new = msg.prev_index + len(msg.entries)
        self._commit_to(msg.commit, last_new)
        self._reply_append(msg.sender, True, last_new)

    def _commit_to(self, leader_commit: int, last_new: int) -> None:
        self.leader_commit = max(self.leader_commit, leader_commit)
        if leader_commit > self.commit_index:
            self.commit_index = max(self.commit_index, min(leader_commit, last_new))

    def _on_snapshot_offer(self, msg: SnapshotOffer) -> None:
        if not self._accept_leader(msg):
            return
        base = msg.first_index - 1
        ours = self.log.first_index - 1
        if base <= ours:
            # We hold a snapshot at or past the leader's compaction point (an offer sent
            # before the leader heard we installed one): carry on from ours.
            self._reply_append(msg.sender, True, ours)
            return
        if self.log.last_index >= base and self.log.term(base) == msg.base_term:
            # Our log already reaches the leader's compaction point and agrees there:
            # no snapshot needed, replicate from it.
            self._reply_append(msg.sender, True, base)
            return
        self._snapshot_from = msg.sender
        self._reply_append(msg.sender, False, 0)

    def _conflict_hint(self, index: int) -> int:
        """Skip back over the whole conflicting term in one round trip."""
        conflict_term = self.log.term(index)
        hint = min(index - 1, self.log.last_index)
        while hint > self.commit_index and self.log.term(hint) == conflict_term:
            hint -= 1
        return hint

    def _reply_append(self, to: str, success: bool, index: int) -> None:
        reply = AppendReply(self.term, self.id, success, index, self._echo_round)
        self._messages.append((to, reply))

    # ---- replication: leader side ---------------------------------------------

    def _on_append_reply(self, msg: AppendReply) -> None:
        if self.role is not Role.LEADER or msg.term != self.term:
            return
        progress = self._progress.get(msg.sender)
        if progress is None:
            return  # not (or no longer) a member
        progress.idle_ticks = 0
        if msg.read_round > progress.read_round:
            progress.read_round = msg.read_round
            self._on_read_round()
        if progress.snapshot:
            base = self.log.first_index - 1
            if not msg.success or msg.index < base:
                return  # still fetching or installing: the offer stands
            progress.snapshot = False  # installed (or never needed): back to the log
            progress.inflight = False
            progress.next = msg.index + 1
        if msg.success:
            if msg.index > progress.match:
                progress.match = msg.index
                self._maybe_commit()
                if self.role is not Role.LEADER:
                    return  # that committed our own removal: we stepped down
            progress.next = max(progress.next, progress.match + 1)
            # Only a reply covering everything sent ends the batch in flight. A reply to a
            # heartbeat (or a duplicate) must not: each one used to start one more
            # pipeline of batches to a lagging follower (sim regression seed 175, and
            # test_core.py::test_a_heartbeat_reply_does_not_start_a_second_batch).
            if msg.index >= progress.next - 1:
                progress.inflight = False
        elif msg.index < progress.match:
            # A stale refusal, sent before the follower got what it later confirmed
            # (answers to a pile of snapshot offers, arriving after the install's
            # success). Each one used to start another batch: 30 in flight to one
            # follower on sim seed 68 while membership runs were built. A fresh refusal
            # that hints below the match is recovered by the in-flight timeout.
            return
        else:
            progress.inflight = False
            progress.next = max(progress.match + 1, min(progress.next - 1, msg.index + 1))
        if not progress.inflight:
            progress.inflight_ticks = 0
            if progress.next <= self.log.last_index:
                self._send_append(msg.sender)
        if msg.sender == self.transferee:
            self._advance_transfer()
        if progress.departed_at and progress.match >= progress.departed_at:
            del self._progress[msg.sender]  # it has learned it was removed

    def _broadcast(self, heartbeat: bool) -> None:
        base = self.log.first_index - 1
        for peer in sorted(self._progress):
            progress = self._progress[peer]
            if progress.snapshot or progress.next - 1 < base:
                # The offer is its heartbeat: it answers, and stays counted.
                if heartbeat or not progress.snapshot:
                    self._offer_snapshot(peer)
                continue
            if progress.inflight and progress.inflight_ticks >= self.config.election_ticks // 2:
                progress.inflight = False  # presumed lost: send again
                # ... from what the follower confirmed. ``next`` already points past the
                # lost batch: without this rewind it was re-sent only once a newer write
                # came along, and an idle cluster never committed it (sim regression
                # seeds 14 and 18, test_core.py::test_a_lost_batch_is_sent_again_...).
                progress.next = progress.match + 1
            if not progress.inflight and (progress.next <= self.log.last_index or not heartbeat):
                self._send_append(peer)
            elif heartbeat:
                match = progress.match
                self._messages.append(
                    (
                        peer,
                        Append(
                            self.term,
                            self.id,
                            match,
                            self.log.term(match),
                            (),
                            self.commit_index,
                            self._read_round,
                        ),
                    )
                )

    def _send_to_idle(self) -> None:
        for peer in sorted(self._progress):
            if not self._progress[peer].inflight:
                self._send_append(peer)

    def _send_append(self, peer: str) -> None:
        progress = self._progress[peer]
        prev = progress.next - 1
        if prev < self.log.first_index - 1:  # compacted away: offer a snapshot
            self._offer_snapshot(peer)
            return
        hi = prev + self.config.max_batch_entries
        entries = tuple(self.log.slice(prev + 1, hi, self.config.max_batch_bytes))
        self._messages.append(
            (
                peer,
                Append(
                    self.term,
                    self.id,
                    prev,
                    self.log.term(prev),
                    entries,
                    self.commit_index,
                    self._read_round,
                ),
            )
        )
        progress.inflight = True
        progress.inflight_ticks = 0
        if entries:
            progress.next = entries[-1].index + 1

    def _offer_snapshot(self, peer: str) -> None:
        progress = self._progress[peer]
        progress.snapshot = True
        progress.inflight = True
        progress.inflight_ticks = 0
        base = self.log.first_index - 1
        offer = SnapshotOffer(self.term, self.id, base + 1, self.log.term(base))
        self._messages.append((peer, offer))

    def _maybe_commit(self) -> None:
        matches = [self._progress[p].match for p in self.voter_peers]
        if self.id in self.voters:  # (a leader removing itself no longer counts)
            matches.append(self.log.stable_last)
        matches.sort()
        quorum = len(self.voters) // 2 + 1
        candidate = matches[len(matches) - quorum]
        if candidate > self.commit_index and self.log.term(candidate) == self.term:
            self.commit_index = candidate
            if self._reads_before_commit:  # our first commit: their index is ours now
                waiting, self._reads_before_commit = self._reads_before_commit, []
                self._start_reads(waiting)
            # Tell followers now rather than at the next heartbeat, so reads there
            # see the write within one round trip.
            self._send_to_idle()
            self._step_down_if_removed()

    def _apply_bound(self) -> int:
        if self.role is Role.LEADER:
            return self.log.last_index
        return self.commit_index

    def _compute_acked(self) -> int:
        return self.acked_for(self.config.policy)

    def acked_for(self, policy: CommitPolicy) -> int:
        """The highest index ``policy`` lets this leader acknowledge now (0 if not leader).
        Writes may each carry their own policy; ``Ready.acked_index`` is the default's."""
        if self.role is not Role.LEADER:
            return 0
        durable = min(self.log.stable_last, self.applied_index)
        follower_match = [self._progress[p].match for p in self.voter_peers]
        return policy.acked_index(durable, self.commit_index, follower_match)
