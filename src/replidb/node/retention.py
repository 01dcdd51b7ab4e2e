"""How much of the log a node keeps: the newest entries up to a cap in entries and in
bytes (the role PostgreSQL's ``wal_keep_size`` / ``max_slot_wal_keep_size`` play).

A node only ever forgets entries that are committed and applied. Within the cap a
follower that was away catches up from the log; one that fell further behind is
brought back by snapshot (it shows as "needs snapshot" in ``replidb status``). Every
node keeps the cap's worth, leader or not, so whoever leads next can still serve it.
"""

from __future__ import annotations

__all__ = ["compaction_point"]


def compaction_point(
    first_index: int,
    safe_index: int,
    max_entries: int,
    max_bytes: int,
    log_entries: int,
    log_bytes: int,
    min_batch: int = 64,
) -> int:
    """The index to compact up to, or 0 for "not now".

    ``safe_index``: committed and applied here. The byte cap becomes an entry count
    through the log's average entry size. Compacts in batches of at least
    ``min_batch`` entries, so a busy node does not delete a few rows every second.
    """
    keep = max_entries
    if max_bytes and log_entries and log_bytes > max_bytes:
        average = max(1, log_bytes // log_entries)
        keep = min(keep, max(1, max_bytes // average))
    upto = safe_index - keep
    if upto - (first_index - 1) < min_batch:
        return 0
    return upto
