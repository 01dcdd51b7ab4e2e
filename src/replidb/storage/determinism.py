"""A writer connection whose non-deterministic inputs come from a shipped context, so
the `statement` format can run the same SQL on every node and get the same rows.

- Time: a VFS that inherits everything from the default VFS but answers
  ``xCurrentTimeInt64`` with the transaction's time, so ``'now'``, CURRENT_TIMESTAMP /
  _DATE / _TIME (column DEFAULTs too) read the leader's clock on every node
  (REFERENCES §3: the VFS is the one place SQLite asks for the time).
- Randomness: random() and randomblob() replaced by functions of the same name (an
  application function overrides a built-in) drawing from a generator seeded per
  transaction.
- Connection state: last_insert_rowid() and changes() start every transaction at 0;
  otherwise they would carry over whatever this connection ran last, which differs
  between the leader and a follower.

Outside a transaction context the clock is the real one and the generator is seeded
from the OS, so nothing here is weaker than SQLite's own behaviour.
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from typing import Any

import apsw

__all__ = ["JULIAN_UNIX_EPOCH_MS", "DeterministicWriter"]

# Julian day of 1970-01-01T00:00Z in milliseconds (what xCurrentTimeInt64 counts).
JULIAN_UNIX_EPOCH_MS = 210866760000000
_names = itertools.count(1)


class _ClockVFS(apsw.VFS):
    def __init__(self, name: str) -> None:
        super().__init__(name, base="")
        self.fixed_julian_ms: int | None = None

    def xCurrentTimeInt64(self) -> int:
        if self.fixed_julian_ms is not None:
            return self.fixed_julian_ms
        return int(super().xCurrentTimeInt64())


class DeterministicWriter:
    """Owns one writer connection and the context it runs statements in."""

    def __init__(self, path: Path) -> None:
        name = f"replidb-clock-{os.getpid()}-{next(_names)}"
        self._vfs = _ClockVFS(name)
        self.conn = apsw.Connection(str(path), vfs=name)
        self._rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self.conn.create_scalar_function("random", self._random, 0, deterministic=False)
        self.conn.create_scalar_function("randomblob", self._randomblob, 1, deterministic=False)

    def enter(self, now_ms: int, seed: int) -> None:
        """Begin a transaction's context: call inside the open transaction, before the
        first statement, with the same values on the leader and on every replica."""
        self._vfs.fixed_julian_ms = now_ms + JULIAN_UNIX_EPOCH_MS
        self._rng = random.Random(seed)
        self.conn.set_last_insert_rowid(0)
        # A DML statement that changes no row sets changes() to 0.
        self.conn.execute("DELETE FROM replidb_meta WHERE 0")

    def leave(self) -> None:
        self._vfs.fixed_julian_ms = None

    def close(self) -> None:
        self.conn.close()
        self._vfs.unregister()

    def _random(self, *_: Any) -> int:
        return self._rng.getrandbits(64) - (1 << 63)

    def _randomblob(self, *args: Any) -> bytes:
        # SQLite: N < 1 gives a 1-byte blob; a non-integer argument is converted.
        try:
            n = int(args[0])
        except (TypeError, ValueError):
            n = 1
        return self._rng.randbytes(max(n, 1))
