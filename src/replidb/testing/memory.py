"""In-memory durable storage for one simulated node.

Everything stored here counts as fsynced: the simulator only writes to it while it
handles a ``Ready`` (or a leader's own write), so a crash — which simply throws the
``Replica`` away and keeps this object — keeps exactly what was persisted. A crash in
the middle of a ``Ready`` is modelled by the simulator stopping between these calls.

The "state machine" is the list of applied entries: the applied index is its length.
Truncating the log rolls back applied entries in the same call, as the real storage
does in one SQLite transaction, so the two can never disagree after a crash.

Compaction hides the log prefix from the core (``first_index``) while the model keeps
the entries, so the checkers can still compare every position; a snapshot install
replaces log and state with the source's committed prefix.

Every rolled-back write is kept in ``discarded`` (the model of ``replidb_discarded``),
in that same atomic step, and survives crashes. As in the real store, only *applied*
writes are kept: entries that are truncated before they were applied were never
visible on this node (a follower's copy of another leader's write), and no-ops carry
no data. An acknowledged write was always applied on the leader that acknowledged it
(``propose_applied``), so if it is lost, that node's ``discarded`` has it.
"""

from __future__ import annotations

from replidb.core.messages import Entry, EntryKind, HardState

__all__ = ["MemoryStorage", "StorageError"]


class StorageError(Exception):
    """The caller broke the storage contract (a gap in the log, applying out of order)."""


class MemoryStorage:
    """Durable log + hard state + applied entries. Implements ``core.log.LogReader``."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.log: list[Entry] = []  # log[i - 1] is the entry at index i
        self.applied: list[Entry] = []  # applied[i - 1] is the entry applied at index i
        # Rolled-back writes (replidb_discarded), in the order they were undone: per
        # truncation, highest index first, as the real store does. Entry values carry
        # (term, index, data). Only ever appended to.
        self.discarded: list[Entry] = []
        self.first = 1  # entries below were compacted: the core may not read them
        self.snapshots_installed = 0

    # ---- LogReader ------------------------------------------------------------

    def first_index(self) -> int:
        return self.first

    def last_index(self) -> int:
        return len(self.log)

    def term(self, index: int) -> int:
        if index == 0 or index < self.first - 1:
            return 0  # gone (as in the real store)
        if not 1 <= index <= len(self.log):
            # The core must only ask about durable positions: fail loudly otherwise.
            raise StorageError(f"term({index}) outside durable log 1..{len(self.log)}")
        return self.log[index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo < self.first or hi > len(self.log):
            raise StorageError(f"entries({lo}, {hi}) outside durable log 1..{len(self.log)}")
        out: list[Entry] = []
        size = 0
        for entry in self.log[lo - 1 : hi]:
            if out and size + len(entry.data) > max_bytes:
                break
            out.append(entry)
            size += len(entry.data)
        return out

    def configs(self) -> list[Entry]:
        # Compaction only hides entries here, so the whole history is still at hand.
        return [e for e in self.log if e.kind == EntryKind.CONFIG]

    # ---- writes (each one is atomic and durable) ------------------------------

    @property
    def applied_index(self) -> int:
        return len(self.applied)

    def entry(self, index: int) -> Entry:
        return self.log[index - 1]

    def save_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def truncate(self, from_index: int) -> list[Entry]:
        """Delete log entries >= from_index and roll back any of them already applied,
        keeping the rolled-back writes in ``discarded`` in the same atomic step.
        Returns the rolled-back entries (only an ex-leader ever has some)."""
        if from_index < 1:
            raise StorageError(f"truncate from {from_index}")
        del self.log[from_index - 1 :]
        rolled_back = self.applied[from_index - 1 :]
        del self.applied[from_index - 1 :]
        self.discarded.extend(e for e in reversed(rolled_back) if e.kind == EntryKind.WRITE)
        return rolled_back

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        for entry in entries:
            if entry.index != len(self.log) + 1:
                raise StorageError(f"append index {entry.index} after {len(self.log)}")
            self.log.append(entry)

    def apply(self, entry: Entry) -> None:
        """Apply a logged entry; the applied position moves in the same step."""
        index = entry.index
        if index != len(self.applied) + 1:
            raise StorageError(f"apply index {index} after applied {len(self.applied)}")
        if index > len(self.log) or self.log[index - 1] != entry:
            raise StorageError(f"apply {entry!r}: not the logged entry at {index}")
        self.applied.append(entry)

    def compact(self, up_to: int) -> None:
        """Forget entries up to ``up_to`` (the caller passes a committed, applied index)."""
        if up_to > len(self.applied):
            raise StorageError(f"compact to {up_to} beyond applied {len(self.applied)}")
        self.first = max(self.first, up_to + 1)

    def install_snapshot(self, log: list[Entry], applied: list[Entry]) -> list[Entry]:
        """Replace log and state with a snapshot (another node's committed prefix, the
        same length for both). Applied writes of ours that it lacks (an ex-leader's
        uncommitted tail) go to ``discarded``, in the same atomic step."""
        common = 0
        while (
            common < min(len(applied), len(self.applied))
            and applied[common] == self.applied[common]
        ):
            common += 1
        rolled_back = self.applied[common:]
        self.discarded.extend(e for e in reversed(rolled_back) if e.kind == EntryKind.WRITE)
        self.log = list(log)
        self.applied = list(applied)
        self.first = len(log) + 1
        self.snapshots_installed += 1
        return rolled_back

    def write_applied(self, entry: Entry) -> None:
        """A leader's own transaction: log row and state change in one atomic write."""
        self.append((entry,))
        self.apply(entry)
