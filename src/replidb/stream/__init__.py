"""Pure encode/decode of replication records, one module per stream format."""

from replidb.stream.logical import DDL, Changes, WriteRecord, decode_record, encode_record

__all__ = ["DDL", "Changes", "WriteRecord", "decode_record", "encode_record"]
