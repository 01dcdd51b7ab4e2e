"""Replace one marked section of docs/benchmarks.md, leaving the others alone."""

from __future__ import annotations

from pathlib import Path


def publish(section: str, path: Path | None, name: str) -> None:
    """Print ``section``, and write it into ``path`` (docs/benchmarks.md) if given."""
    print(section)
    if path is not None:
        write_section(path, name, section)


def write_section(path: Path, name: str, section: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{section.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        before = text.split(begin)[0]
        after = text.split(end, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
