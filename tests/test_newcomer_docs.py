"""What the docs promise a newcomer: DuckDB without httpfs, install from a checkout, what emit fills in."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import BUCKET, S3Server
from test_analysis import make_runs

from faber_runlog import RunStore
from faber_runlog._services.archive import Archiver

DOCS = Path(__file__).parents[1] / "docs"
FAILING = (
    "SELECT phase, step, count(*) AS failures FROM events WHERE type = 'step_error' "
    "GROUP BY phase, step ORDER BY failures DESC"
)


def test_duckdb_over_the_stores_arrow_table(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    store = RunStore(str(tmp_path / "runs"))
    make_runs(store)
    events = store.to_arrow(progress=False)
    assert [("build", "deploy", 1)] == duckdb.sql(FAILING).fetchall()
    assert 18 == events.num_rows


def test_duckdb_reads_the_s3_archive_through_a_registered_s3fs(tmp_path: Path, s3_server: S3Server) -> None:
    duckdb = pytest.importorskip("duckdb")
    local = RunStore(str(tmp_path / "runs"))
    ids = make_runs(local)
    prefix = f"archive-{uuid.uuid4().hex}"
    archive = RunStore(f"s3://{BUCKET}/{prefix}", storage_options=s3_server.storage_options)
    Archiver(local, archive, progress=False).archive_finished()
    con = duckdb.connect()
    con.register_filesystem(s3_server.filesystem())  # no httpfs extension, nothing downloaded
    con.sql(
        f"CREATE VIEW events AS SELECT * FROM read_json_auto('s3://{BUCKET}/{prefix}/*/*/*/events.jsonl', "
        "format='newline_delimited', union_by_name=true)"
    )
    assert [("build", "deploy", 1)] == con.sql(FAILING).fetchall()
    assert sorted(ids.values()) == sorted(r for (r,) in con.sql("SELECT DISTINCT run_id FROM events").fetchall())


def test_the_duckdb_docs_show_the_offline_routes_before_httpfs() -> None:
    text = (DOCS / "archive-and-analysis.md").read_text()
    arrow, s3fs_route, httpfs = (text.index(s) for s in ("store.to_arrow(", "register_filesystem(", "INSTALL httpfs"))
    assert arrow < s3fs_route < httpfs
    assert "fails offline" in text


def test_getting_started_installs_from_a_checkout() -> None:
    text = (DOCS / "getting-started.md").read_text()
    assert "pip install faber_runlog" not in text
    assert "pip install ." in text and "checkout" in text


def test_emit_fills_user_always_and_source_from_the_store_as_documented() -> None:
    plain = RunStore(f"memory://docs-{uuid.uuid4().hex}").create_run("acme", "web")
    tool = RunStore(f"memory://docs-{uuid.uuid4().hex}", source="my-tool").create_run("acme", "web")
    a = plain.log.emit("workflow_start")
    b = tool.log.emit("workflow_start")
    c = tool.log.emit("checkpoint", metadata={"label": "x"}, source="override")
    assert (None, "my-tool", "override") == (a.source, b.source, c.source)
    assert a.user and a.user == b.user
    assert "plus `source` when the store has one" in (DOCS / "getting-started.md").read_text()
