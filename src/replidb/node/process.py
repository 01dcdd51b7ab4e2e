"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: the kernel sends SIGKILL to the child
    when its parent dies, so nodes started by ``cluster up`` or by a test harness are
    not orphaned if that parent is killed (Linux; elsewhere it does nothing)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
