"""The small Parquet writer of the run index's copies (faber_runlog/_format/parquet.py): engines read it back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faber_runlog._format.parquet import ColumnType, encode
from faber_runlog.errors import InvalidArgument

COLUMNS: tuple[tuple[str, ColumnType], ...] = (("u", "text"), ("n", "int64"), ("note", "text"))

_rows = st.lists(
    st.tuples(st.text(max_size=20), st.none() | st.integers(-(2**63), 2**63 - 1), st.none() | st.text(max_size=300)),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(rows=_rows)
def test_pyarrow_reads_back_exactly_the_rows_written(rows: list[tuple[str, int | None, str | None]]) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(encode(COLUMNS, rows)))
    assert ["u", "n", "note"] == table.column_names
    assert [{"u": u, "n": n, "note": note} for u, n, note in rows] == table.to_pylist()


def test_duckdb_queries_a_written_file(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "part.parquet"
    path.write_bytes(encode(COLUMNS, [("a", 1, None), ("b", None, "héllo"), ("c", 3, "x" * 200)]))
    found = duckdb.sql(f"select count(*), sum(n), count(note) from read_parquet('{path}')")
    assert found is not None
    assert [(3, 4, 2)] == found.fetchall()


def test_a_value_of_the_wrong_kind_is_refused_naming_the_column() -> None:
    with pytest.raises(InvalidArgument, match="column 'n' is int64"):
        encode(COLUMNS, [("a", "1", None)])
