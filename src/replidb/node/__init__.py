"""The asyncio runtime that drives a replica with real time, sockets and SQLite."""

from replidb.node.server import Node, NodeConfig

__all__ = ["Node", "NodeConfig"]
