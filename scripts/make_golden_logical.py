"""Write the golden logical-stream file for the current FORMAT_VERSION.

Run once per released format version; the files are committed and
tests/test_logical_golden.py decodes them forever:

    .venv/bin/python scripts/make_golden_logical.py
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
from pathlib import Path

from replidb.storage import SQLiteStore
from replidb.stream.logical import DDL, FORMAT_VERSION, decode_record, row_changes
from replidb.transport.wire import Statement as S

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"

WORKLOAD = [
    [S("CREATE TABLE kinds(id INTEGER PRIMARY KEY, t TEXT, r REAL, b BLOB, n)")],
    [S("INSERT INTO kinds(t, r, b, n) VALUES (?, ?, ?, ?)", ["héllo", 1.5, b"\x00\xff", None])],
    [S("INSERT INTO kinds(t, r, b, n) VALUES ('x', -2.25e10, x'', 9223372036854775807)")],
    [S("UPDATE kinds SET t = 'changed' WHERE id = 1")],
    [S("DELETE FROM kinds WHERE id = 2")],
    [S("CREATE TABLE plain(a, b)"), S("INSERT INTO plain VALUES (1, 'one'), (2, 'two')")],
    [
        S("CREATE TABLE pair(x TEXT, y INTEGER, v, PRIMARY KEY (y, x)) WITHOUT ROWID"),
        S("INSERT INTO pair VALUES ('k', 1, 'first')"),
        S("ALTER TABLE pair ADD COLUMN w DEFAULT 0"),
        S("UPDATE pair SET v = 'second', w = 7 WHERE x = 'k'"),
    ],
]


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def describe(data: bytes) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for change in row_changes(decode_record(data)):
        if isinstance(change, DDL):
            out.append({"ddl": change.sql})
        else:
            out.append(
                {
                    "table": change.table,
                    "op": change.op,
                    "key": _jsonable(change.key),
                    "before": _jsonable(change.before),
                    "after": _jsonable(change.after),
                }
            )
    return out


def main() -> int:
    stem = GOLDEN / f"logical-v{FORMAT_VERSION}"
    if stem.with_suffix(".records").exists() and "--force" not in sys.argv:
        print(f"{stem}.records exists: a released version's golden file never changes")
        return 1
    records: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "golden.db")
        for index, statements in enumerate(WORKLOAD, start=1):
            outcome = store.execute_write(statements, term=1, index=index)
            assert outcome.data is not None
            records.append(outcome.data)
        store.close()
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".records").write_bytes(
        b"".join(struct.pack(">I", len(r)) + r for r in records)
    )
    expected = [describe(r) for r in records]
    stem.with_suffix(".json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {stem}.records ({len(records)} records) and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
