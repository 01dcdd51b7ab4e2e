"""Pure encode/decode of replication records, one module per stream format."""

from replidb.stream.changeset import iter_changeset
from replidb.stream.logical import (
    DDL,
    Changes,
    RowChange,
    WriteRecord,
    decode_record,
    encode_record,
    row_changes,
)

__all__ = [
    "DDL",
    "Changes",
    "RowChange",
    "WriteRecord",
    "decode_record",
    "encode_record",
    "iter_changeset",
    "row_changes",
]
