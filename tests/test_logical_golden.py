"""The logical stream's compatibility promise, kept by files that never change.

Every released format version has a golden stream in tests/golden/ (written once by
scripts/make_golden_logical.py). Each is decoded, described and applied here, forever.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import msgspec
import pytest

from replidb.core.messages import Entry, EntryKind
from replidb.storage import SQLiteStore
from replidb.stream.logical import FORMAT_VERSION, Changes, decode_record, encode_record
from replidb.transport.wire import Statement as S

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "scripts"))

from make_golden_logical import WORKLOAD, describe  # noqa: E402


def _records(path: Path) -> list[bytes]:
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out


GOLDEN_FILES = sorted(GOLDEN.glob("logical-v*.records"))


def test_there_is_a_golden_file_for_the_current_version() -> None:
    assert GOLDEN / f"logical-v{FORMAT_VERSION}.records" in GOLDEN_FILES


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_every_released_version_still_decodes_to_the_same_rows(path: Path) -> None:
    expected = json.loads(path.with_suffix(".json").read_text())
    assert [describe(record) for record in _records(path)] == expected


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_every_released_version_still_applies(path: Path, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "replay.db")
    entries = [Entry(1, i, EntryKind.WRITE, r) for i, r in enumerate(_records(path), start=1)]
    store.persist(None, None, entries)
    store.apply(entries)
    rows = store.execute_read([S("SELECT id, t FROM kinds"), S("SELECT * FROM pair")])
    assert rows[0].rows == [[1, "changed"]]
    assert rows[1].rows == [["k", 1, "second", 7]]
    store.close()


def test_the_writer_still_writes_what_the_current_golden_file_says(tmp_path: Path) -> None:
    """Changing what the writer emits needs a new FORMAT_VERSION and a new golden file."""
    store = SQLiteStore(tmp_path / "now.db")
    written = [
        describe(store.execute_write(s, term=1, index=i).data or b"")
        for i, s in enumerate(WORKLOAD, start=1)
    ]
    store.close()
    golden = GOLDEN / f"logical-v{FORMAT_VERSION}.json"
    assert written == json.loads(golden.read_text())


class _NewerChanges(msgspec.Struct, frozen=True, tag="changes"):
    changeset: bytes
    columns: dict[str, list[str]] = {}
    origin_node: str = "n9"  # a field a newer writer added


class _NewerRecord(msgspec.Struct, frozen=True):
    segments: list[_NewerChanges]
    version: int = FORMAT_VERSION + 1
    schema_version: int = 0
    trace_id: str = "abc"  # another new field


def test_a_reader_ignores_fields_added_by_a_newer_writer() -> None:
    original = decode_record(_records(GOLDEN / f"logical-v{FORMAT_VERSION}.records")[1])
    first = original.segments[0]
    assert isinstance(first, Changes)
    newer = msgspec.msgpack.encode(
        _NewerRecord([_NewerChanges(first.changeset, first.columns)], schema_version=3)
    )
    decoded = decode_record(newer)
    assert decoded.segments == [first]
    assert decoded.version == FORMAT_VERSION + 1 and decoded.schema_version == 3
    assert describe(encode_record(decoded))[0]["after"]["t"] == "héllo"


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a logical write record"):
        decode_record(b"\x93\x01\x02")
