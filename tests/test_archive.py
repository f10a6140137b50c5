"""Consolidation, archiving (local -> moto S3), reading archived runs, retention."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import s3fs
from fsspec.implementations.memory import MemoryFileSystem

from faber_runlog import (
    Archiver,
    ConsolidationError,
    CorruptEvent,
    RetentionPolicy,
    RunArchived,
    RunStillActive,
    RunStore,
    consolidate,
)
from faber_runlog._format.layout import RunLayout
from faber_runlog._services.archive import ARCHIVE_MARKER, read_archive_index
from faber_runlog._services.resume import is_archived

WORKERS = Path(__file__).with_name("_archive_workers.py")


def finished_run(store: RunStore, steps: int = 3, *, fail: bool = False, org: str = "acme") -> str:
    run = store.create_run(org, "web", params={"work_id": "220"})
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    for i in range(steps):
        run.log.emit("step_start", phase="build", step=f"s{i}")
        run.log.emit("step_complete", phase="build", step=f"s{i}", duration_ms=10.0 * (i + 1))
    if fail:
        run.log.emit("step_start", phase="build", step="deploy")
        run.log.emit("step_error", phase="build", step="deploy", error="exit 2")
        # a step error leaves the run `failing` (resumable); only workflow_error ends it as failed
        run.log.emit("workflow_error", error="exit 2")
    else:
        run.log.emit("phase_complete", phase="build")
        run.log.emit("workflow_complete")
    return run.id


def events_of(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    return [e.to_dict() for e in store.get_run(run_id).log.read()]


@pytest.fixture
def s3_dest(s3_server: Any) -> RunStore:
    return RunStore(f"s3://faber-test/archive-{uuid.uuid4().hex}", storage_options=s3_server.storage_options)


# -- consolidation ------------------------------------------------------------------


def test_consolidation_writes_every_event_in_order_and_records_count_range_and_hash(store: RunStore) -> None:
    run_id = finished_run(store)
    before = events_of(store, run_id)
    record = consolidate(store, run_id)
    layout = RunLayout(store.get_run(run_id).run_id)
    lines = (store.storage.read(layout.jsonl) or b"").splitlines()
    assert (len(before), 1, len(before)) == (record.count, record.first_seq, record.last_seq)
    assert [e["event_id"] for e in before] == [json.loads(line)["event_id"] for line in lines]
    # The seal event right after the last event is the record: it names the range and the hash.
    seal = store.get_run(run_id).log.get(record.last_seq + 1)
    assert ("log_sealed", record.last_seq, record.sha256) == (
        seal.type,
        seal.metadata["through"],
        seal.metadata["sha256"],
    )
    assert record.sha256 == "sha256:" + hashlib.sha256(store.storage.read(layout.jsonl) or b"").hexdigest()
    assert record.last_seq + 1 == store.get_run(run_id).state().sealed_at
    assert record == consolidate(store, run_id)  # idempotent


def test_consolidation_of_a_run_with_a_gap_is_refused_naming_the_missing_sequence(store: RunStore) -> None:
    run_id = finished_run(store)
    layout = RunLayout(store.get_run(run_id).run_id)
    store.get_run(run_id).log.snapshot()  # a snapshot past the gap: the fold alone would end the log at event 2
    store.storage.delete(layout.event(3))
    with pytest.raises(ConsolidationError, match="event 3 of run") as info:
        consolidate(store, run_id)
    assert (3, False) == (info.value.seq, store.storage.exists(layout.jsonl))


def test_consolidation_of_an_active_run_is_refused(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    with pytest.raises(RunStillActive, match="running") as info:
        consolidate(store, run.id)
    assert ("running", False) == (info.value.status, store.storage.exists(RunLayout(run.run_id).jsonl))


def test_appending_to_a_consolidated_run_fails_clearly(store: RunStore) -> None:
    run_id = finished_run(store)
    consolidate(store, run_id)
    with pytest.raises(RunArchived, match="re-run"):
        store.get_run(run_id).log.emit("checkpoint", metadata={"label": "late"})


# -- reading a consolidated run whose event files are gone -----------------------------


@pytest.mark.rule("protocol", 7)
def test_consolidated_run_reads_the_same_after_its_event_files_are_removed(store_factory: Any) -> None:
    store = store_factory(seal_grace=0)  # cleanup may remove event files as soon as the run is sealed
    run_id = finished_run(store, fail=True)
    dest = RunStore(f"memory://archive-{uuid.uuid4().hex}")
    archiver = Archiver(store, dest, progress=False)
    archiver.archive(run_id)
    before_events, before_state = events_of(store, run_id), store.get_run(run_id).state()
    before_at = store.get_run(run_id).state(at=4)
    assert "log_sealed" == before_events[-1]["type"]
    report = archiver.cleanup(RetentionPolicy(), dry_run=False)
    layout = RunLayout(store.get_run(run_id).run_id)
    # Only the seal's file stays: it is the boundary a stalled writer runs into.
    seal_file = layout.event(len(before_events)).rsplit("/", 1)[1]
    assert ((run_id,), [seal_file]) == (report.removed, store.storage.list_names(layout.events))
    for where in (store, dest):
        run = where.get_run(run_id)
        assert before_events == events_of(where, run_id)
        assert before_state.to_dict() == run.state().to_dict()
        assert before_at.to_dict() == where.get_run(run_id).state(at=4).to_dict()
        assert before_events[2] == where.get_run(run_id).log.get(3).to_dict()
        assert [run_id] == [s.run_id for s in where.list_runs(status="failed")]


# -- archiving to S3 ---------------------------------------------------------------------


def test_archive_copies_the_run_to_s3_indexes_it_and_marks_the_source(tmp_path: Path, s3_dest: RunStore) -> None:
    local = RunStore(str(tmp_path / "runs"))
    run_id = finished_run(local, fail=True)
    result = Archiver(local, s3_dest, progress=False).archive(run_id)
    assert "archived" == result.outcome
    assert events_of(local, run_id) == events_of(s3_dest, run_id)
    assert local.get_run(run_id).state().to_dict() == s3_dest.get_run(run_id).state().to_dict()
    assert [run_id] == [e.run_id for e in read_archive_index(s3_dest, org="acme", project="web")]
    rid = local.get_run(run_id).run_id
    assert (True, True) == (
        is_archived(local.storage, rid),
        is_archived(s3_dest.storage, rid),
    )
    assert "already_archived" == Archiver(local, s3_dest, progress=False).archive(run_id).outcome


def test_archive_finished_skips_active_and_recent_runs(tmp_path: Path, s3_dest: RunStore) -> None:
    local = RunStore(str(tmp_path / "runs"))
    done = [finished_run(local), finished_run(local, fail=True, org="other")]
    local.create_run("acme", "web").log.emit("workflow_start")
    archiver = Archiver(local, s3_dest, progress=False)
    assert [] == archiver.archive_finished(older_than=1.0)
    assert sorted(done) == sorted(r.run_id for r in archiver.archive_finished())
    assert [] == archiver.archive_finished()
    assert [done[0]] == [e.run_id for e in archiver.index(org="acme")]


class FailingS3(s3fs.S3FileSystem):  # type: ignore[misc]
    """A real s3fs filesystem that fails the writes or reads whose path contains ``fail_on``."""

    fail_on: str | None = None
    fail_method: str = "_pipe_file"

    def _check(self, method: str, path: str) -> None:
        if self.fail_on is not None and method == self.fail_method and self.fail_on in path:
            raise OSError(f"injected failure: {method} {path}")

    async def _pipe_file(self, path: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        self._check("_pipe_file", path)
        return await super()._pipe_file(path, data, *args, **kwargs)

    async def _cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._check("_cat_file", path)
        return await super()._cat_file(path, *args, **kwargs)


class FailingMemory(MemoryFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """A real memory filesystem that fails writes whose path contains ``fail_on``."""

    fail_on: str | None = None

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> Any:
        if self.fail_on is not None and self.fail_on in path:
            raise OSError(f"injected failure: pipe_file {path}")
        return super().pipe_file(path, value, *args, **kwargs)


DEST_STEPS = [
    ("_pipe_file", "{uuid}/events.jsonl"), ("_pipe_file", "{uuid}/events/"),  # events/: the seal's file
    ("_pipe_file", "{uuid}/state.json"), ("_pipe_file", "{uuid}/archived.json"),
    ("_pipe_file", "{uuid}/metadata.json"),
    ("_pipe_file", "archive-index/acme/web/{uuid}"),
]  # fmt: skip  # a table: one row per line
SOURCE_STEPS = ["events.jsonl", "events/", "state.json", "archived.json"]  # events/: claiming the seal
CACHE_STEPS = {("source", "state.json")}
"""Writes of a cache: once the seal is claimed a failed snapshot is logged, not raised, and archiving goes on."""


@pytest.mark.parametrize(
    ("side", "method", "fail_on"),
    [("dest", m, p) for m, p in DEST_STEPS] + [("source", "pipe_file", p) for p in SOURCE_STEPS],
)
def test_archive_interrupted_at_any_step_finishes_when_run_again(
    s3_server: Any, side: str, method: str, fail_on: str
) -> None:
    src_fs = FailingMemory(skip_instance_cache=True)
    source = RunStore(fs=src_fs, root=f"/src-{uuid.uuid4().hex}")
    dst_fs = FailingS3(**s3_server.storage_options)
    dest = RunStore(fs=dst_fs, root=f"faber-test/arch-{uuid.uuid4().hex}")
    run_id = finished_run(source, fail=True)
    other = finished_run(source)
    before = events_of(source, run_id)
    rid = source.get_run(run_id).run_id
    if side == "dest":
        dst_fs.fail_method, dst_fs.fail_on = method, fail_on.format(uuid=rid.uuid)
    else:
        src_fs.fail_on = f"{rid.uuid}/{fail_on}"
    archiver = Archiver(source, dest, progress=False)
    results = {r.run_id: r for r in archiver.archive_many([run_id, other])}
    assert ((side, fail_on) in CACHE_STEPS) == results[run_id].ok
    # The local run is complete (plus, once sealed, its seal); the archive has the run whole or not at all.
    local = events_of(source, run_id)
    assert before == local[: len(before)]
    assert [] == [e for e in local[len(before) :] if e["type"] != "log_sealed"]
    assert (not dest.has_run(run_id)) or local == events_of(dest, run_id)
    dst_fs.fail_on = src_fs.fail_on = None
    again = "already_archived" if (side, fail_on) in CACHE_STEPS else "archived"
    assert again == archiver.archive(run_id).outcome
    sealed = events_of(source, run_id)
    assert (before, "log_sealed") == (sealed[:-1], sealed[-1]["type"])
    assert sealed == events_of(dest, run_id)
    assert sorted([run_id, other]) == sorted(e.run_id for e in archiver.index())
    assert sorted([run_id, other]) == sorted(s.run_id for s in dest.list_runs())
    assert source.storage.exists(f"{RunLayout(source.get_run(run_id).run_id).dir}/{ARCHIVE_MARKER}")


def test_two_archivers_on_the_same_run_at_once_leave_one_index_entry(tmp_path: Path, s3_server: Any) -> None:
    source_spec: dict[str, Any] = {"url": str(tmp_path / "runs"), "storage_options": {}}
    dest_spec: dict[str, Any] = {
        "url": f"s3://faber-test/arch-{uuid.uuid4().hex}",
        "storage_options": s3_server.storage_options,
    }
    local = RunStore(source_spec["url"])
    run_id = finished_run(local, steps=20)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "archive", json.dumps(source_spec), json.dumps(dest_spec), run_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [0, 0] == [p.returncode for p in procs], outs
    dest = RunStore(dest_spec["url"], storage_options=s3_server.storage_options)
    assert [run_id] == [e.run_id for e in read_archive_index(dest)]
    assert events_of(local, run_id) == events_of(dest, run_id)


# -- retention -----------------------------------------------------------------------------


def test_retention_dry_run_lists_and_real_run_deletes_only_what_the_policy_says(
    tmp_path: Path, s3_dest: RunStore
) -> None:
    local = RunStore(str(tmp_path / "runs"), seal_grace=0)
    ok_run, failed_run = finished_run(local), finished_run(local, fail=True)
    not_archived = finished_run(local)
    archiver = Archiver(local, s3_dest, progress=False)
    archiver.archive_many([ok_run, failed_run])
    files = {r: len(local.storage.list_names(RunLayout(local.get_run(r).run_id).events)) for r in (ok_run, failed_run)}
    policy = RetentionPolicy(keep_failed=True)
    assert () == archiver.cleanup(RetentionPolicy(keep_days=30), dry_run=True).removed
    dry = archiver.cleanup(policy, dry_run=True)
    assert ((ok_run,), (failed_run,)) == (dry.removed, dry.kept)
    assert files == {r: len(local.storage.list_names(RunLayout(local.get_run(r).run_id).events)) for r in files}
    real = archiver.cleanup(policy, dry_run=False)
    assert [i.files for i in dry.items] == [i.files for i in real.items]
    left = {
        r: len(local.storage.list_names(RunLayout(local.get_run(r).run_id).events))
        for r in (ok_run, failed_run, not_archived)
    }
    # The seal's event file stays behind: it is the boundary a stalled writer runs into.
    assert {ok_run: 1, failed_run: files[failed_run], not_archived: 10} == left
    assert local.get_run(ok_run).state().status == "completed"


# -- reading a consolidated log -------------------------------------------------------


def _consolidated_only(store: RunStore) -> tuple[str, RunLayout]:
    """A consolidated run whose per-event files are gone: events.jsonl and the seal (event 11) are all there is."""
    run_id = finished_run(store)
    record = consolidate(store, run_id)
    layout = RunLayout(store.get_run(run_id).run_id)
    for name in store.storage.list_names(layout.events):
        if name != layout.event(record.last_seq + 1).rsplit("/", 1)[1]:  # cleanup keeps the seal, so do we
            store.storage.delete(f"{layout.events}/{name}")
    assert 10 == record.last_seq
    return run_id, layout


def test_a_consolidated_log_reads_from_any_cursor(store: RunStore) -> None:
    run_id, _ = _consolidated_only(store)
    log = store.get_run(run_id).log
    assert list(range(1, 12)) == [e.event_id for e in log.read()]
    assert [6, 7, 8] == [e.event_id for e in log.read(since=5, limit=3)]
    assert [10, 11] == [e.event_id for e in log.read(since=9)]  # the last line, then the seal
    assert [] == list(log.read(since=11))


def test_a_truncated_events_jsonl_names_the_first_missing_line(store: RunStore) -> None:
    run_id, layout = _consolidated_only(store)
    body = store.storage.read(layout.jsonl) or b""
    store.storage.replace(layout.jsonl, b"".join(body.splitlines(keepends=True)[:7]))
    seen: list[int] = []
    with pytest.raises(CorruptEvent) as info:
        seen.extend(e.event_id for e in store.get_run(run_id).log.read())
    assert [] == seen  # refused before any event is handed out, not half-way
    assert (8, store.storage.path(layout.jsonl)) == (info.value.seq, info.value.path)
    assert "holds 7 events but event 8 is not a seal" in str(info.value)  # the seal (event 11) says 10


def test_a_damaged_line_of_events_jsonl_is_reported_not_skipped(store: RunStore) -> None:
    run_id, layout = _consolidated_only(store)
    lines = (store.storage.read(layout.jsonl) or b"").splitlines(keepends=True)
    # Same length as the line it replaces: the file still matches its seal's size, one line is bad.
    lines[4] = b'{"event_id": 5, "ty' + b" " * (len(lines[4]) - 20) + b"\n"
    store.storage.replace(layout.jsonl, b"".join(lines))
    log = store.get_run(run_id).log
    with pytest.raises(CorruptEvent) as info:
        list(log.read())
    assert 5 == info.value.seq
    assert [6, 7] == [e.event_id for e in log.read(since=5, limit=2)]  # lines before the cursor are not parsed
