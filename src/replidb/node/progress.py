"""Catch-up progress lines: a follower far behind says how far it has come, at most
once a second, and says once when it has caught up."""

from __future__ import annotations

import logging
import time

__all__ = ["CatchUpReporter"]


class CatchUpReporter:
    def __init__(self, log: logging.Logger, interval_s: float = 1.0, behind: int = 100) -> None:
        self._log = log
        self._interval = interval_s
        self._behind = behind
        self._catching_up = False
        self._last_report = 0.0

    def applied(self, applied: int, commit: int) -> None:
        lag = commit - applied
        now = time.monotonic()
        if lag >= self._behind:
            if not self._catching_up or now - self._last_report >= self._interval:
                self._log.info("catching up: applied %d of %d (%d behind)", applied, commit, lag)
                self._last_report = now
            self._catching_up = True
        elif self._catching_up and lag < self._behind:
            self._log.info("caught up at index %d", applied)
            self._catching_up = False
