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

from faber_runlog import FaberRunlogError, RunStore, consolidate
from faber_runlog._base import codec as _codec
from faber_runlog._log import index as _index
from faber_runlog._log.index import folder as index_folder

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
                state = run.state()
                status = state.status
                wanted = filters.get("status")
                since = filters.get("ended_since")
                if since is not None and (state.ended_at is None or state.ended_at < since):
                    continue
                if wanted is None or status == wanted or (isinstance(wanted, tuple) and status in wanted):
                    rows.append((run.metadata.created_at, run.id, status))
    rows.sort(reverse=not filters.get("oldest"))
    limit = filters.get("limit")
    return [(rid, status) for _, rid, status in rows[:limit]]


def _paged(store: RunStore, size: int) -> list[tuple[str, str]]:
    """The first pages of ``size`` runs, followed by cursor (as many as make 5 runs, or fewer at the end)."""
    out: list[tuple[str, str]] = []
    cursor = None
    while len(out) < 5:
        page = store.list_runs(limit=size, cursor=cursor)
        out += [(s.run_id, s.status) for s in page]
        cursor = page.next_cursor
        if cursor is None:
            break
    return out[:5]


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
@pytest.mark.rule("index", 3)
def test_index_answers_equal_a_scan_of_the_logs(
    store_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    ops: list[tuple[str, int]],
) -> None:
    _answers_equal_a_scan(store_kind, tmp_path, request, monkeypatch, ops)


@settings(
    max_examples=soak_scale(12, 1),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["create", *_MOVES, "archive"]), st.integers(0, 30)), min_size=4, max_size=10
    )
)
@pytest.mark.backends("s3")
@pytest.mark.rule("index", 3)
def test_index_answers_equal_a_scan_of_the_logs_on_s3(
    store_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    ops: list[tuple[str, int]],
) -> None:
    _answers_equal_a_scan(store_kind, tmp_path, request, monkeypatch, ops)


def _answers_equal_a_scan(
    store_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    ops: list[tuple[str, int]],
) -> None:
    monkeypatch.setattr(_index, "PART_ROWS", 2)  # parts of 2 to 4 rows: queries cross many of them
    monkeypatch.setattr(_index, "SHARD", 7)  # commits in folders of 7: listings cross them
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
    for status in ("failed", "running", "completed", "failing", ("failed", "completed", "created")):
        assert _scan(fresh, status=status, limit=3) == _listed(fresh, status=status, limit=3)
        assert _scan(fresh, status=status, limit=2, oldest=True) == _listed(
            fresh, status=status, limit=2, order="oldest"
        )
    assert _scan(fresh, limit=5) == _paged(fresh, 2)
    # End times: each row's is its log's, and a filter on them equals the scan's.
    ends = {r.id: r.state().ended_at for r in runs if fresh.has_run(r.id)}
    assert ends == {s.run_id: s.ended_at for s in fresh.list_runs()}
    ended = sorted(e for e in ends.values() if e is not None)
    for since in ended[len(ended) // 2 :][:1] or ["2000-01-01T00:00:00.000000Z"]:
        assert _scan(fresh, ended_since=since) == _listed(fresh, ended_since=since)
        assert _scan(fresh, ended_since=since, status="failed", limit=2) == _listed(
            fresh, ended_since=since, status="failed", limit=2
        )
    assert all(r.ok for r in fresh.verify_index())


def _parts(store: RunStore) -> list[str]:
    """The part files of acme/web's index."""
    top = f"{index_folder('acme', 'web')}/parts"
    return [f"{top}/{n}" for n in store.storage.list_names(top)]


@pytest.mark.rule("index", 7)
def test_a_damaged_checkpoint_falls_back_to_the_scan_says_so_once_and_reindex_repairs_it(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    runs = [store.create_run("acme", "web") for _ in range(6)]
    runs[2].start()
    runs[2].fail("boom")
    expected = _scan(store)
    for key in _parts(store):
        store.storage.replace(key, b'{"u": "x", "status": "failed"}\n{"op')
    fresh = RunStore(fs=store.storage.fs, root=store.storage.root)
    with caplog.at_level(logging.WARNING, logger="faber_runlog._services.store"):
        assert expected == _listed(fresh)
        assert [(runs[2].id, "failed")] == _listed(fresh, status="failed")
    assert 1 == sum("run index of acme/web" in r.getMessage() for r in caplog.records)
    [report] = fresh.reindex()
    assert not report.ok
    assert all(r.ok for r in fresh.verify_index())
    assert expected == _listed(RunStore(fs=store.storage.fs, root=store.storage.root))


@pytest.mark.rule("index", 1)
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
    from faber_runlog import RunStore
    from faber_runlog._log import index as _index

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # after the event is durable, before its index entry

    store = RunStore(sys.argv[1])
    run = store.get_run(sys.argv[2])
    _index.IndexWriter.entry = die
    run.fail("killed between the event and its index entry")
    """
)


@pytest.mark.backends("local")
@pytest.mark.rule("index", 3)
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
@pytest.mark.rule("index", 8)
@pytest.mark.parametrize("older", [570, 5000])
def test_the_20_newest_failed_runs_cost_at_most_12_requests_on_s3_whatever_the_number_of_runs(
    s3_server: S3Server, tmp_path: Path, older: int
) -> None:
    import s3fs

    built = RunStore(str(tmp_path / "built"), fsync=False)
    failed = []
    for _ in range(30):
        run = built.create_run("acme", "web")
        run.start()
        run.fail("boom")
        failed.append(run)
    view = _index.read(built.storage, "acme", "web")
    assert view is not None
    records: list[dict[str, Any]] = [{"op": "entry", "u": u, "nonce": None, "row": r} for u, r in view.rows.items()]
    # ``older`` more rows: older runs that failed or completed (S3 holds no folder of theirs: never read).
    for i in range(older):
        at = f"2020-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z"
        listing: dict[str, Any] = {"created_at": at, "params": {}, "tags": {}, "parent_run_id": None}
        row: dict[str, Any] = {"u": str(uuid.uuid4()), "status": "failed" if i % 7 == 0 else "completed"}
        row.update(last_event_id=2, updated_at=at, current_phase=None, current_step=None, listing=listing)
        row.update(started_at=at, ended_at=at)
        records.append({"op": "entry", "u": row["u"], "nonce": None, "row": row})
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
    root = built.storage.root.rstrip("/") + "/"
    keys = [k for run in failed for k in built.storage.fs.find(built.storage.path(run.id))]
    s3.storage.put_many({k[len(root) :]: built.storage.fs.cat_file(k) for k in keys}, create=True)
    _index.rebuild(s3.storage, "acme", "web", 600, records)  # a checkpoint of them all at commit 600
    for i in range(5):  # and commits after it, as writers leave them between checkpoints
        body = _codec.dumps({"records": [{"op": "close", "nonce": f"n{i}"}]})
        assert s3.storage.create(f"{index_folder('acme', 'web')}/log/{0:014d}/{601 + i:020d}.json", body)
    calls.clear()
    page = s3.list_runs(org="acme", project="web", status="failed", limit=20)
    expected = [r.id for r in sorted(failed, key=lambda r: r.metadata.created_at, reverse=True)[:20]]
    assert expected == [s.run_id for s in page]
    assert page.next_cursor is not None
    # The hint (it holds the manifest), one LIST after it, the 5 commits since, the newest failed part.
    assert len(calls) <= 12, Counter(calls)
    calls.clear()
    page = s3.list_runs(org="acme", project="web", status="failed", limit=20, cursor=page.next_cursor)
    assert [r.id for r in sorted(failed, key=lambda r: r.metadata.created_at, reverse=True)[20:]] == [
        s.run_id for s in page
    ][:10]
    assert len(calls) <= 13, Counter(calls)


@pytest.mark.backends("local")
def test_faber_runlog_reindex_check_reports_a_missing_index_and_reindex_starts_it(tmp_path: Path) -> None:
    import io
    import json

    from faber_runlog._frontends.cli import main

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


# -- the checkpoint's parts and manifest ---------------------------------------------------------------


def _row(u: str, status: str, event: int, at: str = "2026-01-01T00:00:00.000000Z") -> dict[str, Any]:
    return {"u": u, "status": status, "last_event_id": event, "updated_at": at, "current_phase": None}


def _entry(u: str, status: str, event: int, nonce: str | None, at: str = "2026-01-01T00:00:00.000000Z") -> Any:
    row = _row(u, status, event, at)
    row.update(current_step=None, listing={"created_at": at, "params": {}, "tags": {}, "parent_run_id": None})
    return {"op": "entry", "u": u, "nonce": nonce, "row": row}


def _select(store: RunStore, statuses: Any = None, need: int | None = None) -> list[tuple[str, str, int]]:
    snap = _index.load(store.storage, "acme", "web")
    rows = _index.select(
        store.storage,
        "acme",
        "web",
        snap,
        statuses=statuses,
        keep=lambda _r: True,
        beyond=lambda _k: True,
        newest=True,
        need=need,
    )
    return [(r["u"], r["status"], r["last_event_id"]) for r in rows]


@pytest.mark.backends("memory")
@pytest.mark.rule("index", 6)
def test_an_entry_for_an_older_event_committed_after_a_checkpoint_never_replaces_the_newer_row(
    store: RunStore,
) -> None:
    # Two writers of one run: the first announced event 5, the second announced and wrote event 7 and its
    # entry; the checkpoint at 10 holds the row of event 7 and the first intent, still open. The first
    # writer's entry (event 5) lands after the checkpoint: readers keep event 7 (the intent's floor).
    writer = _index.IndexWriter(store.storage)
    writer.genesis("acme", "web")
    u = str(uuid.uuid4())
    writer.commit("acme", "web", [{"op": "intent", "u": u, "nonce": "n1", "at": "t"}])
    writer.commit("acme", "web", [{"op": "intent", "u": u, "nonce": "n2", "at": "t"}])
    writer.commit("acme", "web", [_entry(u, "completed", 7, "n2")])
    for _ in range(5):
        writer.commit("acme", "web", [{"op": "close", "nonce": "none"}])
    assert 10 == writer.commit("acme", "web", [{"op": "close", "nonce": "none"}])  # the checkpoint
    assert [(u, "n1")] == [(v[0], n) for n, v in _index.load(store.storage, "acme", "web").manifest.intents.items()]
    writer.commit("acme", "web", [_entry(u, "running", 5, "n1")])
    view = _index.read(store.storage, "acme", "web")
    assert view is not None and ("completed", 7) == (view.rows[u]["status"], view.rows[u]["last_event_id"])
    assert [(u, "completed", 7)] == _select(store) == _select(store, {"completed"})
    assert [] == _select(store, {"running"})
    for _ in range(9):  # the next checkpoint folds it the same way
        writer.commit("acme", "web", [{"op": "close", "nonce": "none"}])
    assert {} == _index.load(store.storage, "acme", "web").manifest.intents
    assert [(u, "completed", 7)] == _select(store)


@pytest.mark.backends("memory")
def test_a_checkpoint_rewrites_only_the_parts_that_changed_and_equals_a_rebuild(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index, "PART_ROWS", 4)
    writer = _index.IndexWriter(store.storage)
    writer.genesis("acme", "web")
    us = [str(uuid.uuid4()) for _ in range(60)]
    for i, u in enumerate(us):  # 60 runs, oldest first; every third failed
        at = f"2026-01-01T00:00:{i:02d}.000000Z"
        writer.commit("acme", "web", [_entry(u, "failed" if i % 3 == 0 else "completed", 2, None, at)])
    before = _index.load(store.storage, "acme", "web").manifest
    assert len(before.parts) >= 10 and all(p.rows <= 8 for p in before.parts)
    # Nine commits: one old run resumed, one recent one completed; then the checkpoint at 70.
    commits = [_entry(us[3], "running", 3, None, "2026-01-01T00:00:03.000000Z")]
    commits += [_entry(us[58], "completed", 3, None, "2026-01-01T00:00:58.000000Z")]
    commits += [{"op": "close", "nonce": "none"}] * 7
    for rec in commits:
        writer.commit("acme", "web", [rec])
    after = _index.load(store.storage, "acme", "web").manifest
    assert 70 == after.version
    new = {p.name for p in after.parts} - {p.name for p in before.parts}
    assert len(new) <= 4, new  # the parts the two runs left and went into, never the rest
    assert set(after.retired) == {p.name for p in before.parts} - {p.name for p in after.parts}
    view = _index.read(store.storage, "acme", "web")
    assert view is not None
    other = RunStore("memory://" + uuid.uuid4().hex)
    _index.rebuild(
        other.storage,
        "acme",
        "web",
        70,
        [{"op": "entry", "u": u, "nonce": None, "row": r} for u, r in view.rows.items()],
    )
    rebuilt = _index.read(other.storage, "acme", "web")
    assert rebuilt is not None and rebuilt.rows == view.rows
    assert ("running", "completed") == (view.rows[us[3]]["status"], view.rows[us[58]]["status"])
    assert _select(store, {"failed"}, 5) == _select(other, {"failed"}, 5)
    assert [u for u in reversed(us) if us.index(u) % 3 == 0 and u != us[3]][:5] == [
        u for u, _, _ in _select(store, {"failed"}, 5)
    ]
    # The next checkpoint deletes the parts this one retired.
    for _ in range(10):
        writer.commit("acme", "web", [{"op": "close", "nonce": "none"}])
    names = set(store.storage.list_names(f"{index_folder('acme', 'web')}/parts"))
    assert not names & set(after.retired)


@pytest.mark.backends("memory")
def test_a_part_gone_from_under_the_manifest_falls_back_to_the_scan_and_an_ended_run_row_follows_appends(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    runs = [store.create_run("acme", "web") for _ in range(5)]
    runs[1].start()
    runs[1].fail("boom")
    runs[1].log.emit("checkpoint", metadata={"label": "after the end"})  # announced: the row follows it
    [listed] = store.list_runs(status="failed")
    assert (runs[1].id, 3, 3) == (listed.run_id, listed.last_event_id, runs[1].state().last_event_id)
    expected = _scan(store)
    for key in _parts(store):
        store.storage.delete(key)
    fresh = RunStore(fs=store.storage.fs, root=store.storage.root)
    with caplog.at_level(logging.WARNING, logger="faber_runlog._services.store"):
        assert expected == _listed(fresh) == _listed(fresh)
    assert 1 == sum("run index of acme/web" in r.getMessage() for r in caplog.records)
    fresh.reindex()
    assert all(r.ok for r in fresh.verify_index())


@pytest.mark.backends("memory", "local")
def test_a_listing_of_an_active_run_reads_its_summary_and_no_event_where_writes_are_cheap(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where a write costs no request the writer keeps summary.json current with every append, so
    # listing a long active run costs what listing a fresh one does: no fold of its events.
    run = store.create_run("acme", "web")
    run.start()
    for j in range(30):
        run.log.emit("step_start", phase="build", step=f"s{j}")
    last = run.state().last_event_id
    read: list[str] = []
    real = store.storage.read_many

    def counting(keys: Any) -> Any:
        keys = list(keys)
        read.extend(keys)
        return real(keys)

    monkeypatch.setattr(store.storage, "read_many", counting)
    (row,) = store.list_runs().runs
    assert (last, "running", "build", "s29") == (row.last_event_id, row.status, row.current_phase, row.current_step)
    events = [k.rsplit("/", 1)[1] for k in read if "/events/" in k]
    assert [f"{last + 1:020d}.json"] == events  # only the probe that no event follows the summary


@pytest.mark.backends("memory")
def test_a_query_on_end_times_reads_no_part_whose_end_times_cannot_meet_it(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index, "PART_ROWS", 2)  # parts of 2 to 4 rows
    runs = []
    for i in range(12):
        run = store.create_run("acme", "web")
        run.start()
        if i % 3 == 0:
            run.complete()
        runs.append(run)
    store.reindex(org="acme", project="web")  # one checkpoint holds every row: the parts carry their end ranges
    ended = sorted((e, r.id) for r in runs if (e := r.state().ended_at) is not None)
    read: list[str] = []
    real = store.storage.read_many

    def counting(keys: Any) -> Any:
        keys = list(keys)
        read.extend(k for k in keys if "/parts/" in k)
        return real(keys)

    monkeypatch.setattr(store.storage, "read_many", counting)
    page = store.list_runs(ended_since=ended[-1][0])
    assert [ended[-1][1]] == [s.run_id for s in page]
    manifest = _index.load(store.storage, "acme", "web").manifest
    holding = [p.name for p in manifest.parts if p.ended and p.ended[1] >= ended[-1][0]]
    assert len(manifest.parts) > 2
    assert sorted(holding) == sorted(k.rsplit("/", 1)[1] for k in read)
