"""The replidb command line (click)."""

__all__: list[str] = []
