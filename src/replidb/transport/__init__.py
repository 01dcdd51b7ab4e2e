"""Adapters to the network: length-prefixed msgpack frames over asyncio TCP."""

__all__: list[str] = []
