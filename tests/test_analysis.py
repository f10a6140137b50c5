"""Frames and Arrow tables of past runs, their filters, the missing-extra error, DuckDB over events.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from faber_runlog import Archiver, MissingExtra, RunStore
from faber_runlog._services.analysis import EVENT_COLUMNS, RUN_COLUMNS, events_frame, runs_frame

# Services over the storage contract (pinned on every backend elsewhere): memory and local, a few tests on S3.
pytestmark = pytest.mark.backends("memory", "local")


def make_runs(store: RunStore) -> dict[str, str]:
    """One completed run and one that fails at build/deploy (and ends failed), in acme/web; one completed in other/api."""
    ids: dict[str, str] = {}
    for name, org, project, fail in (
        ("ok", "acme", "web", False),
        ("bad", "acme", "web", True),
        ("api", "other", "api", False),
    ):
        run = store.create_run(org, project, params={"work_id": name})
        run.log.emit("workflow_start")
        run.log.emit("step_start", phase="build", step="compile")
        run.log.emit("step_complete", phase="build", step="compile", duration_ms=120.0)
        run.log.emit("step_start", phase="build", step="deploy")
        if fail:
            run.log.emit("step_error", phase="build", step="deploy", error={"message": "exit 2", "code": 2})
            # a step error leaves the run `failing` (resumable); the workflow ends it as failed
            run.log.emit("workflow_error", error="exit 2")
        else:
            run.log.emit("step_complete", phase="build", step="deploy", metadata={"duration_ms": 30})
            run.log.emit("workflow_complete")
        ids[name] = run.id
    return ids


@pytest.mark.backends("memory", "local", "s3")
def test_events_frame_has_the_documented_columns_and_types(store: RunStore) -> None:
    ids = make_runs(store)
    frame = store.events_frame(progress=False)
    assert list(EVENT_COLUMNS) == list(frame.columns)
    assert 18 == len(frame)
    assert ("int64", "float64") == (str(frame["event_id"].dtype), str(frame["duration_ms"].dtype))
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert all(pd.api.types.is_string_dtype(frame[c]) for c in ("run_id", "type", "phase", "error", "message"))
    failed = frame[frame["type"] == "step_error"].iloc[0]
    assert (ids["bad"], "exit 2", 2) == (failed["run_id"], failed["error"], failed["metadata"].get("code", 2))
    # duration_ms comes from the event or, failing that, from its metadata
    assert [120.0, 30.0] == frame[frame["run_id"] == ids["ok"]]["duration_ms"].dropna().tolist()


def test_events_frame_filters_on_org_project_status_time_and_type(store: RunStore) -> None:
    ids = make_runs(store)
    assert {ids["ok"], ids["bad"]} == set(store.events_frame(org="acme", project="web", progress=False)["run_id"])
    assert {ids["bad"]} == set(store.events_frame(status="failed", progress=False)["run_id"])
    assert ["step_error"] == store.events_frame(types=["step_error"], progress=False)["type"].tolist()
    assert 0 == len(store.events_frame(since="2999-01-01", progress=False))
    assert 18 == len(store.events_frame(since="2000-01-01", until="2999-01-01", progress=False))


def test_runs_frame_has_one_row_per_run_with_status_duration_and_failed_step(store: RunStore) -> None:
    ids = make_runs(store)
    frame = store.runs_frame(progress=False)
    assert list(RUN_COLUMNS) == list(frame.columns)
    assert sorted(ids.values()) == sorted(frame["run_id"])
    bad = store.runs_frame(status="failed", progress=False)
    assert [(ids["bad"], "build", "deploy", "exit 2")] == list(
        zip(bad["run_id"], bad["failed_phase"], bad["failed_step"], bad["error"], strict=True)
    )
    assert {"work_id": "bad"} == bad["params"].iloc[0]
    assert ("float64", "int64", "bool") == tuple(
        str(frame[c].dtype) for c in ("duration_ms", "last_event_id", "consolidated")
    )
    assert (frame["duration_ms"] >= 0).all()


def test_to_arrow_gives_a_table_with_nested_columns_as_json_text(store: RunStore) -> None:
    import pyarrow as pa

    make_runs(store)
    table = store.to_arrow(progress=False)
    assert (list(EVENT_COLUMNS), 18) == (table.column_names, table.num_rows)
    assert (pa.string(), pa.large_string()).count(table.schema.field("metadata").type) == 1
    assert 3 == store.to_arrow("runs", progress=False).num_rows


@pytest.mark.backends("memory", "local", "s3")
def test_frames_read_archived_runs_the_same_as_live_ones(tmp_path: Path, store: RunStore) -> None:
    make_runs(store)
    archive = RunStore(str(tmp_path / "archive"))
    Archiver(store, archive, progress=False).archive_finished()
    live = store.events_frame(progress=False).drop(columns=["metadata"])
    archived = archive.events_frame(progress=False).drop(columns=["metadata"])
    key = ["run_id", "event_id"]
    pd.testing.assert_frame_equal(
        live.sort_values(key, ignore_index=True), archived.sort_values(key, ignore_index=True)
    )
    assert [True] * 3 == archive.runs_frame(progress=False)["consolidated"].tolist()


def test_missing_analysis_extra_gives_the_documented_error(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(MissingExtra, match=r"faber_runlog\[analysis\]"):
        events_frame(store, progress=False)
    with pytest.raises(ImportError, match="pandas"):
        runs_frame(store, progress=False)


def test_duckdb_answers_the_notebook_questions_over_archived_events_jsonl(tmp_path: Path) -> None:
    import duckdb

    local = RunStore(str(tmp_path / "runs"))
    ids = make_runs(local)
    archive = RunStore(str(tmp_path / "archive"))
    Archiver(local, archive, progress=False).archive_finished()
    events = f"read_json_auto('{archive.url}/*/*/*/events.jsonl', format='newline_delimited', union_by_name=true)"

    def sql(query: str) -> Any:
        relation = duckdb.sql(query)
        assert relation is not None  # a SELECT always gives a relation
        return relation

    failing = sql(
        f"SELECT phase, step, count(*) AS failures FROM {events} WHERE type = 'step_error' "
        "GROUP BY phase, step ORDER BY failures DESC"
    ).fetchall()
    assert [("build", "deploy", 1)] == failing
    failed_runs = sql(
        f"SELECT DISTINCT run_id FROM {events} WHERE type IN ('step_error', 'workflow_error') "
        "AND CAST(timestamp AS TIMESTAMP) >= now()::TIMESTAMP - INTERVAL 7 DAY"
    ).fetchall()
    assert [(ids["bad"],)] == failed_runs
    p50 = sql(
        f"SELECT step, quantile_cont(duration_ms, 0.5) FROM {events} "
        "WHERE type = 'step_complete' AND duration_ms IS NOT NULL GROUP BY step"
    ).fetchall()
    assert [("compile", 120.0)] == p50
