"""The replica's view of its log: durable entries (read through LogReader) plus the
unstable suffix that the caller has not yet persisted.

The caller owns storage. The core only reads from it; what must be written comes out
of ``Ready`` (``truncate_from`` then ``entries``) and becomes stable at ``advance``.
"""

from __future__ import annotations

from typing import Protocol

from replidb.core.messages import Entry

__all__ = ["LogReader", "LogView"]


class LogReader(Protocol):
    """Read access to the durable log, provided by the caller (SQLite, or memory in tests)."""

    def first_index(self) -> int:
        """The first entry still held: 1 + the index of the last compaction or
        installed snapshot (1 if there was none)."""
        ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; 0 for index 0; for ``first_index() - 1`` the
        term of the compacted/snapshot position; 0 below that (gone)."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``lo..hi`` inclusive, stopping early once ``max_bytes`` of data is
        reached (always at least one entry when ``lo <= hi``)."""
        ...

    def configs(self) -> list[Entry]:
        """The CONFIG entries held, in index order, starting with the one in force at
        the compaction point (as an entry at that index) when the log was compacted or
        replaced by a snapshot. Read once, when the replica starts."""
        ...


class LogView:
    def __init__(self, reader: LogReader) -> None:
        self._reader = reader
        self.stable_last = reader.last_index()
        self.unstable: list[Entry] = []
        self.truncate_from: int | None = None  # pending: delete durable entries >= this

    @property
    def last_index(self) -> int:
        return self.stable_last + len(self.unstable)

    @property
    def first_index(self) -> int:
        """Entries below this were compacted away (they are committed everywhere)."""
        return self._reader.first_index()

    def term(self, index: int) -> int:
        if index <= 0:
            return 0
        if index > self.stable_last:
            offset = index - self.stable_last - 1
            return self.unstable[offset].term if offset < len(self.unstable) else 0
        return self._reader.term(index)

    @property
    def last_term(self) -> int:
        return self.term(self.last_index)

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries lo..hi inclusive (bounded by max_bytes, at least one)."""
        hi = min(hi, self.last_index)
        if lo > hi:
            return []
        out: list[Entry] = []
        if lo <= self.stable_last:
            out = self._reader.entries(lo, min(hi, self.stable_last), max_bytes)
            if len(out) < min(hi, self.stable_last) - lo + 1:
                return out  # byte budget reached inside the durable part
            lo = self.stable_last + 1
        size = sum(len(e.data) for e in out)
        for index in range(lo, hi + 1):
            entry = self.unstable[index - self.stable_last - 1]
            if out and size + len(entry.data) > max_bytes:
                break
            out.append(entry)
            size += len(entry.data)
        return out

    def append(self, entries: list[Entry]) -> None:
        """Append entries; the first one's index says where (it truncates anything after)."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.stable_last:
            self.truncate_from = (
                first if self.truncate_from is None else min(self.truncate_from, first)
            )
            self.stable_last = first - 1
            self.unstable = list(entries)
        else:
            keep = first - self.stable_last - 1
            assert keep <= len(self.unstable), "append leaves a gap in the log"
            self.unstable = self.unstable[:keep] + list(entries)

    def mark_stable(self, persisted: tuple[Entry, ...], truncated_from: int | None) -> None:
        """The caller persisted what a Ready asked for."""
        if truncated_from is not None and self.truncate_from == truncated_from:
            self.truncate_from = None
        if persisted:
            count = len(persisted)
            assert self.unstable[:count] == list(persisted), "persisted entries changed"
            self.unstable = self.unstable[count:]
            self.stable_last = persisted[-1].index

    def restore(self, index: int) -> None:
        """The caller replaced its log with a snapshot at ``index`` (now empty above it)."""
        self.stable_last = index
        self.unstable = []
        self.truncate_from = None

    def append_durable(self, entry: Entry) -> None:
        """The caller already wrote ``entry`` durably (a leader's own transaction)."""
        assert not self.unstable and entry.index == self.stable_last + 1
        self.stable_last = entry.index
