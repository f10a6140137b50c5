"""A small Parquet writer: one row group of optional text and int64 columns, plain and uncompressed.

The run index writes a Parquet copy of each part (docs/concurrency.md, "The run index") for DuckDB,
Polars and Spark. Writing it here, without pyarrow, keeps the core free of that dependency and of its
import time (about 0.15 s, which a process started per event would pay at every checkpoint it writes),
so every writer writes the copies. Only what the index needs is built: a flat schema, one data page
(v1) per column, PLAIN values, RLE definition levels, no statistics and no compression; the file
metadata is Thrift's compact protocol (the Parquet format's ``parquet.thrift``). The tests read what
it writes with pyarrow and DuckDB.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, Literal

from faber_runlog.errors import InvalidArgument

__all__ = ["ColumnType", "encode"]

ColumnType = Literal["text", "int64"]

_MAGIC: Final = b"PAR1"
# parquet.thrift enums
_BYTE_ARRAY: Final = 6
_INT64: Final = 2
_OPTIONAL: Final = 1
_UTF8: Final = 0
_PLAIN: Final = 0
_RLE: Final = 3
_DATA_PAGE: Final = 0
_UNCOMPRESSED: Final = 0
# Thrift compact protocol types
_I32: Final = 5
_I64: Final = 6
_BINARY: Final = 8
_LIST: Final = 9
_STRUCT: Final = 12


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


class _Struct:
    """One Thrift struct in the compact protocol: fields in increasing id order, then a stop byte."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._last = 0

    def _field(self, fid: int, ftype: int) -> None:
        delta = fid - self._last
        if not 0 < delta <= 15:
            raise InvalidArgument(f"thrift fields out of order: {fid} after {self._last}")
        self._out.append((delta << 4) | ftype)
        self._last = fid

    def i32(self, fid: int, value: int) -> _Struct:
        self._field(fid, _I32)
        self._out += _zigzag(value)
        return self

    def i64(self, fid: int, value: int) -> _Struct:
        self._field(fid, _I64)
        self._out += _zigzag(value)
        return self

    def text(self, fid: int, value: str) -> _Struct:
        self._field(fid, _BINARY)
        data = value.encode()
        self._out += _varint(len(data)) + data
        return self

    def struct(self, fid: int, value: _Struct) -> _Struct:
        self._field(fid, _STRUCT)
        self._out += value.done()
        return self

    def list(self, fid: int, etype: int, items: Sequence[Any]) -> _Struct:
        self._field(fid, _LIST)
        n = len(items)
        self._out += bytes([(n << 4) | etype]) if n < 15 else bytes([0xF0 | etype]) + _varint(n)
        for item in items:
            if etype == _STRUCT:
                self._out += item.done()
            elif etype == _I32:
                self._out += _zigzag(item)
            else:  # binary
                data = item.encode()
                self._out += _varint(len(data)) + data
        return self

    def done(self) -> bytes:
        return bytes(self._out) + b"\x00"


def _levels(defined: list[bool]) -> bytes:
    """Definition levels (bit width 1) as RLE runs, prefixed by their length (data page v1)."""
    out = bytearray()
    i = 0
    while i < len(defined):
        j = i
        while j < len(defined) and defined[j] == defined[i]:
            j += 1
        out += _varint((j - i) << 1) + bytes([1 if defined[i] else 0])
        i = j
    return struct.pack("<i", len(out)) + bytes(out)


def _values(ctype: ColumnType, values: list[Any]) -> bytes:
    if ctype == "int64":
        return struct.pack(f"<{len(values)}q", *values)
    out = bytearray()
    for v in values:
        data = v.encode()
        out += struct.pack("<i", len(data)) + data
    return bytes(out)


def encode(columns: Sequence[tuple[str, ColumnType]], rows: Sequence[Sequence[Any]]) -> bytes:
    """A Parquet file of ``rows`` (each a value per column; None is null) under ``columns`` (name, ctype)."""
    out = bytearray(_MAGIC)
    chunks: list[_Struct] = []
    total = 0
    for index, (name, ctype) in enumerate(columns):
        cells = [row[index] for row in rows]
        present = [c for c in cells if c is not None]
        if ctype == "int64" and not all(isinstance(c, int) and not isinstance(c, bool) for c in present):
            raise InvalidArgument(f"column {name!r} is int64 but holds {present!r}")
        if ctype == "text" and not all(isinstance(c, str) for c in present):
            raise InvalidArgument(f"column {name!r} is text but holds {present!r}")
        page = _levels([c is not None for c in cells]) + _values(ctype, present)
        header = (
            _Struct()
            .i32(1, _DATA_PAGE)
            .i32(2, len(page))
            .i32(3, len(page))
            .struct(5, _Struct().i32(1, len(cells)).i32(2, _PLAIN).i32(3, _RLE).i32(4, _RLE))
            .done()
        )
        offset = len(out)
        out += header + page
        size = len(header) + len(page)
        total += size
        meta = (
            _Struct()
            .i32(1, _INT64 if ctype == "int64" else _BYTE_ARRAY)
            .list(2, _I32, [_PLAIN, _RLE])
            .list(3, _BINARY, [name])
            .i32(4, _UNCOMPRESSED)
            .i64(5, len(cells))
            .i64(6, size)
            .i64(7, size)
            .i64(9, offset)
        )
        chunks.append(_Struct().i64(2, offset).struct(3, meta))
    schema = [_Struct().text(4, "schema").i32(5, len(columns))]
    for name, ctype in columns:
        element = _Struct().i32(1, _INT64 if ctype == "int64" else _BYTE_ARRAY).i32(3, _OPTIONAL).text(4, name)
        schema.append(element.i32(6, _UTF8) if ctype == "text" else element)
    group = _Struct().list(1, _STRUCT, chunks).i64(2, total).i64(3, len(rows))
    footer = (
        _Struct()
        .i32(1, 1)
        .list(2, _STRUCT, schema)
        .i64(3, len(rows))
        .list(4, _STRUCT, [group])
        .text(6, "faber_runlog")
        .done()
    )
    out += footer + struct.pack("<i", len(footer)) + _MAGIC
    return bytes(out)
