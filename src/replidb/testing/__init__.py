"""Deterministic simulation of replidb clusters: memory storage, simulator, checkers."""

from replidb.testing.checkers import InvariantViolation, SafetyChecker
from replidb.testing.memory import MemoryStorage, StorageError
from replidb.testing.sim import SimResult, Simulation, main_sim, run

__all__ = [
    "InvariantViolation",
    "MemoryStorage",
    "SafetyChecker",
    "SimResult",
    "Simulation",
    "StorageError",
    "main_sim",
    "run",
]
