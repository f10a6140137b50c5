"""The run index (docs/concurrency.md, "The run index"): listings answered from it equal a scan of the logs."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, S3Server, make_store, soak_scale
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faber_runlog import FaberRunlogError, RunStore, _codec, _index, consolidate
from faber_runlog._index import folder as index_folder

pytestmark = pytest.mark.backends("memory", "local")


def _scan(store: RunStore, **filters: Any) -> list[tuple[str, str]]:
    """The brute-force answer: every run folder's state folded from its log, filtered and sorted newest first."""
    rows = []
    for org in store.storage.list_names(""):
        if org.startswith("."):
            continue
        for project in store.storage.list_names(org):
            for u in store.storage.list_names(f"{org}/{project}"):
                run = store.get_run(f"{org}/{project}/{u}")
                status = run.state().status
                if filters.get("status") in (None, status):
                    rows.append((run.metadata.created_at, run.id, status))
    rows.sort(reverse=True)
    limit = filters.get("limit")
    return [(rid, status) for _, rid, status in rows[:limit]]


def _listed(store: RunStore, **filters: Any) -> list[tuple[str, str]]:
    return [(s.run_id, s.status) for s in store.list_runs(**filters)]


_MOVES = {
    "start": lambda r: r.start(),
    "step_error": lambda r: r.log.emit("step_error", phase="p", step="s", error="x"),
    "fail": lambda r: r.fail("boom"),
    "complete": lambda r: r.complete(),
    "cancel": lambda r: r.cancel(),
    "resume": lambda r: r.log.emit("workflow_resumed"),
    "pause": lambda r: r.pause(),
    "note": lambda r: r.log.emit("step_start", phase="p", step="s"),
}


@settings(
    max_examples=soak_scale(60, 6),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["create", *_MOVES, "archive"]), st.integers(0, 30)), min_size=4, max_size=30
    )
)
def test_index_answers_equal_a_scan_of_the_logs(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest, ops: list[tuple[str, int]]
) -> None:
    store = make_store(store_kind, tmp_path / uuid.uuid4().hex, request, fsync=False)
    runs: list[Any] = []
    for op, pick in ops:
        if op == "create" or not runs:
            runs.append(store.create_run("acme", "web" if pick % 3 else "api"))
            continue
        run = runs[pick % len(runs)]
        try:
            if op == "archive":
                consolidate(store, run.id)
            else:
                _MOVES[op](run)
        except FaberRunlogError:
            pass  # refused by the transition table (or not ended, for archive): nothing changed
    fresh = RunStore(fs=store.storage.fs, root=store.storage.root)  # another process: nothing cached
    assert _scan(fresh) == _listed(fresh)
    for status in ("failed", "running", "completed", "failing"):
        assert _scan(fresh, status=status, limit=3) == _listed(fresh, status=status, limit=3)
    assert all(r.ok for r in fresh.verify_index())


def _checkpoint(store: RunStore) -> str:
    names = store.storage.list_names(index_folder("acme", "web"))
    return f"{index_folder('acme', 'web')}/{[n for n in names if n.endswith('.checkpoint.jsonl')][-1]}"


def test_a_damaged_checkpoint_falls_back_to_the_scan_says_so_once_and_reindex_repairs_it(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    runs = [store.create_run("acme", "web") for _ in range(6)]
    runs[2].start()
    runs[2].fail("boom")
    expected = _scan(store)
    store.storage.replace(_checkpoint(store), b'{"format": "faber_runlog.index/1", "version": 10, "runs": 3}\n{"op')
    fresh = RunStore(fs=store.storage.fs, root=store.storage.root)
    with caplog.at_level(logging.WARNING, logger="faber_runlog._store"):
        assert expected == _listed(fresh)
        assert [(runs[2].id, "failed")] == _listed(fresh, status="failed")
    assert 1 == sum("run index of acme/web" in r.getMessage() for r in caplog.records)
    [report] = fresh.reindex()
    assert not report.ok
    assert all(r.ok for r in fresh.verify_index())
    assert expected == _listed(RunStore(fs=store.storage.fs, root=store.storage.root))


def test_runs_written_before_the_index_are_listed_and_reindex_starts_it(store: RunStore) -> None:
    runs = [store.create_run("acme", "web") for _ in range(3)]
    runs[0].start()
    store.storage.fs.rm(store.storage.path(".index"), recursive=True)  # a store from before the index
    fresh = RunStore(fs=store.storage.fs, root=store.storage.root)
    newer = fresh.create_run("acme", "web")  # the project holds runs: no index is started behind them
    newer.start()
    assert _scan(fresh) == _listed(fresh)
    assert [False] == [r.ok for r in fresh.verify_index()]
    [report] = fresh.reindex()
    assert (True, 4) == (report.started, len(report.added))
    fresh.get_run(runs[1].id).fail("late")  # (handles older than the deletion cache the old tail)
    assert _scan(fresh) == _listed(RunStore(fs=store.storage.fs, root=store.storage.root))
    assert all(r.ok for r in fresh.verify_index())


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from faber_runlog import RunStore, _index

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # after the event is durable, before its index entry

    store = RunStore(sys.argv[1])
    run = store.get_run(sys.argv[2])
    _index.IndexWriter.entry = die
    run.fail("killed between the event and its index entry")
    """
)


@pytest.mark.backends("local")
def test_a_writer_killed_between_its_event_and_its_index_entry_never_gives_a_wrong_status(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()
    other = store.create_run("acme", "web")
    assert [] == _listed(store, status="failed")
    proc = subprocess.run([sys.executable, "-c", _KILLER, store.url, run.id], check=False, timeout=120)
    assert -signal.SIGKILL == proc.returncode
    assert "failed" == store.get_run(run.id).state().status  # the event is durable
    for handle in (store, RunStore(str(tmp_path / "runs"))):
        assert [(run.id, "failed")] == _listed(handle, status="failed")
        assert [(other.id, "created"), (run.id, "failed")] == _listed(handle)
    [report] = store.verify_index()  # the row lags (the open intent is why listings were right)
    assert [run.id] == list(report.corrected)


# -- S3: requests counted ------------------------------------------------------------------


@pytest.mark.backends("s3")
def test_the_20_newest_failed_of_1000_indexed_runs_cost_a_bounded_number_of_requests_on_s3(
    s3_server: S3Server, tmp_path: Path
) -> None:
    import s3fs

    built = RunStore(str(tmp_path / "built"), fsync=False)
    failed = []
    for _ in range(30):
        run = built.create_run("acme", "web")
        run.start()
        run.fail("boom")
        failed.append(run)
    # 970 more rows in the checkpoint: older runs that completed (S3 holds no folder of theirs: never read).
    view = _index.read(built.storage, "acme", "web")
    assert view is not None
    for i in range(970):
        u = str(uuid.uuid4())
        listing: dict[str, Any] = {
            "created_at": f"2020-01-01T00:00:{i % 60:02d}.{i:06d}Z",
            "params": {},
            "tags": {},
            "parent_run_id": None,
        }
        view.rows[u] = {
            "u": u,
            "status": "failed" if i % 7 == 0 else "completed",
            "last_event_id": 2,
            "listing": listing,
        }
    index = index_folder("acme", "web")
    objects = {
        f"{index}/_last_checkpoint": _codec.dumps({"version": view.version}),
        f"{index}/{view.version:020d}.checkpoint.jsonl": _index.checkpoint_body(view),
    }
    keys = []
    for run in failed:
        keys += built.storage.fs.find(built.storage.path(run.id))
    root = built.storage.root.rstrip("/") + "/"
    calls: list[str] = []

    class CountingS3(s3fs.S3FileSystem):  # type: ignore[misc]
        async def _call_s3(self, method: Any, *args: Any, **kw: Any) -> Any:
            key = str(kw.get("Key", kw.get("Prefix", "")))
            what = key.rsplit("/", 1)[-1] if "/.index/" not in key else "index"
            calls.append(f"{getattr(method, '__name__', method)} {what.lstrip('0123456789')}")
            return await super()._call_s3(method, *args, **kw)

        def call_s3(self, method: Any, *args: Any, **kw: Any) -> Any:
            calls.append(f"{getattr(method, '__name__', method)} sync")
            return super().call_s3(method, *args, **kw)

    fs = CountingS3(**s3_server.storage_options)
    s3 = RunStore(fs=fs, root=f"{BUCKET}/runs-{uuid.uuid4().hex}")
    objects.update({k[len(root) :]: built.storage.fs.cat_file(k) for k in keys})
    s3.storage.put_many(objects, create=True)
    calls.clear()
    page = s3.list_runs(org="acme", project="web", status="failed", limit=20)
    expected = [r.id for r in sorted(failed, key=lambda r: r.metadata.created_at, reverse=True)[:20]]
    assert expected == [s.run_id for s in page]
    assert page.next_cursor is not None
    # hint + LIST + checkpoint + <= 9 commits, then the 21 runs of the page (+1 to know a next page exists):
    # their summary, the probe for a later event and the events.jsonl check (HEAD + LIST when missing) each.
    assert len(calls) <= 12 + 4 * 21, Counter(calls)


@pytest.mark.backends("local")
def test_faber_runlog_reindex_check_reports_a_missing_index_and_reindex_starts_it(tmp_path: Path) -> None:
    import io
    import json

    from faber_runlog._cli import main

    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    store.storage.fs.rm(store.storage.path(".index"), recursive=True)
    out = io.StringIO()
    assert 1 == main(["--root", store.url, "reindex", "--check", "--json"], out=out)
    [report] = json.loads(out.getvalue())
    assert ([run.id], True, False) == (report["added"], report["started"], report["ok"])
    assert 0 == main(["--root", store.url, "reindex"], out=io.StringIO())
    out = io.StringIO()
    assert 0 == main(["--root", store.url, "reindex", "--check"], out=out)
    assert "acme/web: ok\n" == out.getvalue()


_WRITER = textwrap.dedent(
    """
    import sys
    from faber_runlog import RunStore

    store = RunStore(sys.argv[1], fsync=False)
    for i in range(12):
        run = store.create_run("acme", "web")
        run.start()
        if i % 3 == 0:
            run.fail("boom")
        elif i % 3 == 1:
            run.complete()
    """
)


@pytest.mark.backends("local")
def test_two_processes_writing_one_project_at_once_leave_an_index_that_equals_the_scan(tmp_path: Path) -> None:
    url = str(tmp_path / "runs")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url]) for _ in range(2)]
    assert [0, 0] == [p.wait(timeout=120) for p in procs]
    store = RunStore(url)
    assert 24 == len(store.list_runs())
    assert _scan(store) == _listed(store)
    assert _scan(store, status="failed", limit=5) == _listed(store, status="failed", limit=5)
    assert all(r.ok for r in store.verify_index())
