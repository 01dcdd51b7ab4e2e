"""Child process for test_physical_crash.py (not a test module): opens a PhysicalStore
in a directory and does one thing until the parent kills it.

    physical_child.py DIR apply BATCH      apply every persisted entry, BATCH at a time
    physical_child.py DIR die-before-log   commit one write to data.db, then SIGKILL
                                           itself before the log write

It prints "ready" once the store is open, so the parent times its kill from there.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from replidb.storage.physical_store import PhysicalStore
from replidb.transport.wire import Statement


def main() -> None:
    directory, mode = Path(sys.argv[1]), sys.argv[2]
    store = PhysicalStore(directory)
    print("ready", flush=True)
    if mode == "apply":
        batch = int(sys.argv[3])
        while store.applied_index() < store.last_index():
            lo = store.applied_index() + 1
            store.apply(store.entries(lo, min(lo + batch - 1, store.last_index()), 1 << 62))
    elif mode == "die-before-log":

        def die(*_args: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        PhysicalStore._append_log = die  # type: ignore[method-assign,assignment]
        index = store.last_index() + 1
        store.execute_write([Statement("INSERT INTO t(v) VALUES ('doomed')")], 1, index)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("done", flush=True)
    store.close()


if __name__ == "__main__":
    main()
