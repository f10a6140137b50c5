"""The log is the only truth: regressions for every way an acknowledged event was lost or hidden.

Each test names the defect it covers (issue "The log is the only truth").
They run on memory, a local folder and moto S3 where the defect applies, and
with real processes and SIGKILL where the defect is a race.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import (
    ApprovalNotFound,
    Archiver,
    FaberRunlogError,
    InvalidTransition,
    RunArchived,
    RunStore,
    consolidate,
)
from faber_runlog._domain.transitions import markdown
from faber_runlog._format.layout import RunLayout, decode_snapshot, encode_snapshot

WORKERS = Path(__file__).with_name("_workers.py")


def _ended_run(store: RunStore, n: int = 3) -> Any:
    run = store.create_run("acme", "web")
    run.start()
    for i in range(n):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    run.complete()
    return run


def _ids(run: Any) -> list[int]:
    return [e.event_id for e in run.log.read()]


# -- 1. append after seal --------------------------------------------------------------


@pytest.mark.rule("protocol", 4)
def test_a_handle_loaded_before_consolidation_cannot_append_after_the_seal(store: RunStore) -> None:
    run = _ended_run(store)
    stale = store.get_run(run.id)
    stale.state()  # loads its state before the seal
    record = consolidate(store, run.id)
    with pytest.raises(RunArchived, match="sealed"):
        stale.log.emit("checkpoint", metadata={"label": "late"})
    fresh = store.get_run(run.id)
    assert list(range(1, record.last_seq + 2)) == _ids(fresh)
    assert "log_sealed" == fresh.log.get(record.last_seq + 1).type
    assert record.last_seq + 1 == fresh.state().sealed_at


def test_a_writer_racing_the_seal_is_either_in_events_jsonl_or_refused(store: RunStore) -> None:
    run = _ended_run(store)
    writer = store.get_run(run.id)
    writer.state()
    acked = [writer.log.emit("checkpoint", metadata={"label": "before"}).event_id]
    record = consolidate(store, run.id)
    with pytest.raises(RunArchived):
        writer.log.emit("checkpoint", metadata={"label": "after"})
    jsonl = store.storage.read(RunLayout(run.run_id).jsonl) or b""
    assert record.last_seq == jsonl.count(b"\n")
    assert set(acked) <= {e.event_id for e in store.get_run(run.id).log.read()}


@pytest.mark.rule("protocol", 4)
def test_appenders_in_other_processes_never_get_an_acknowledged_event_past_the_seal(
    shared_store_spec: dict[str, Any],
) -> None:
    store = RunStore(shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None)
    run = _ended_run(store)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "append_until_sealed", json.dumps(shared_store_spec), run.id, f"w{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    time.sleep(0.3)
    record = None
    for _ in range(50):
        try:
            record = consolidate(store, run.id)
            break
        except FaberRunlogError:  # still active, or racing its writers: try again
            time.sleep(0.05)
    assert record is not None
    acked: list[int] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        lines = out.split()
        assert "sealed" == lines[-1]
        acked += [int(x) for x in lines[:-1]]
    stored = store.get_run(run.id).log.read()
    kept = {e.event_id for e in stored if e.type == "checkpoint"}
    assert all(a < record.last_seq + 1 for a in acked)
    assert set(acked) <= kept


# -- 2. a stale writer cannot unseal ---------------------------------------------------------


def test_an_old_state_json_written_after_the_seal_does_not_unseal_the_run(store: RunStore, tmp_path: Path) -> None:
    run = _ended_run(store)
    layout = RunLayout(run.run_id)
    old_snapshot = store.storage.read(layout.state)
    assert old_snapshot is not None
    record = consolidate(store, run.id)
    store.storage.replace(layout.state, old_snapshot)  # what a stale writer's snapshot would do
    again = store.get_run(run.id)
    assert record.last_seq + 1 == again.state().sealed_at
    with pytest.raises(RunArchived):
        again.log.emit("checkpoint", metadata={"label": "late"})


@pytest.mark.rule("protocol", 7)
def test_cleanup_keeps_every_event_readable_and_one_bad_run_does_not_stop_it(
    store_factory: Any, tmp_path: Path
) -> None:
    src = store_factory(seal_grace=0)
    dst = RunStore(str(tmp_path / "archive"))
    good = [_ended_run(src, 4) for _ in range(2)]
    archiver = Archiver(src, dst, progress=False)
    assert all(r.ok for r in archiver.archive_many([r.id for r in good]))
    # Damage the first run's events.jsonl after archiving: its cleanup must be refused, not the others'.
    src.storage.replace(RunLayout(good[0].run_id).jsonl, b"garbage\n")
    report = archiver.cleanup(dry_run=False)
    by_run = {i.run_id: i for i in report.items}
    assert "keep" == by_run[good[0].id].action
    assert "remove" == by_run[good[1].id].action
    cleaned = src.get_run(good[1].id)
    assert list(range(1, 8)) == _ids(cleaned)  # start, 4 checkpoints, complete, the seal
    assert "completed" == cleaned.state().status
    assert list(range(1, 8)) == _ids(dst.get_run(good[1].id))


# -- 3. consolidation interrupted ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.rule("protocol", 5)
def test_consolidation_killed_at_random_points_never_loses_an_acknowledged_append(
    shared_store_spec: dict[str, Any], soak: bool
) -> None:
    store = RunStore(shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None)
    rounds = 40 if soak else 4
    rng = random.Random(7)
    for _ in range(rounds):
        run = _ended_run(store, 2)
        proc = subprocess.Popen(
            [sys.executable, str(WORKERS), "consolidate", json.dumps(shared_store_spec), run.id],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, 0.8))  # interpreter start-up takes most of this
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        acked = None
        try:
            acked = store.get_run(run.id).log.emit("checkpoint", metadata={"label": "after-kill"}).event_id
        except RunArchived:
            pass
        record = consolidate(store, run.id)
        ids = {e.event_id for e in store.get_run(run.id).log.read()}
        if acked is not None:
            assert acked in ids and acked <= record.last_seq
        jsonl = store.storage.read(RunLayout(run.run_id).jsonl) or b""
        assert record.last_seq == jsonl.count(b"\n")


@pytest.mark.rule("protocol", 5)
def test_consolidating_again_after_the_seal_rewrites_a_missing_events_jsonl(store: RunStore) -> None:
    run = _ended_run(store)
    record = consolidate(store, run.id)
    store.storage.delete(RunLayout(run.run_id).jsonl)  # as if killed right after the seal
    assert list(range(1, record.last_seq + 2)) == _ids(store.get_run(run.id))  # read from the files
    assert record == consolidate(store, run.id)
    assert record.size == len(store.storage.read(RunLayout(run.run_id).jsonl) or b"")


# -- 4. a lying state.json ------------------------------------------------------------------


def _rewrite_snapshot(store: RunStore, run: Any, **changes: Any) -> None:
    key = RunLayout(run.run_id).state
    state, fp = decode_snapshot(store.storage.read(key) or b"")
    state.update(changes)
    store.storage.replace(key, encode_snapshot(state, fp))  # a well-formed snapshot that lies


@pytest.mark.rule("protocol", 2)
def test_a_state_json_claiming_more_events_than_exist_is_ignored(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    for i in range(3):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    _rewrite_snapshot(store, run, last_event_id=50)
    fresh = store.get_run(run.id)
    assert 4 == fresh.log.emit("checkpoint", metadata={"label": "next"}).event_id
    assert [1, 2, 3, 4] == _ids(fresh)
    assert 4 == store.get_run(run.id).state().last_event_id


@pytest.mark.rule("protocol", 8)
def test_an_edited_status_in_state_json_is_not_believed(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    run.fail("exit 2")
    key = RunLayout(run.run_id).state
    body = (store.storage.read(key) or b"").replace(b'"status":"failed"', b'"status":"completed"', 1)
    store.storage.replace(key, body)  # edited by hand: the checksum no longer holds
    assert "failed" == store.get_run(run.id).state().status
    assert ["failed"] == [s.status for s in store.list_runs()]


# -- 5. no error after a durable append ------------------------------------------------------


@pytest.mark.rule("protocol", 9)
def test_a_failed_catch_up_after_the_claim_does_not_turn_success_into_an_error(store_factory: Any) -> None:
    store = store_factory(snapshot_every=5)
    run = store.create_run("acme", "web")
    behind = store.get_run(run.id)
    behind.log.emit("checkpoint", metadata={"label": "0"})  # event 1: behind's state is current
    for i in range(3):
        run.log.emit("checkpoint", metadata={"label": str(i + 1)})  # events 2..4 by another handle
    store.storage.replace(RunLayout(run.run_id).event(3), b"{torn")  # catching up will fail at 3
    event = behind.log.emit("checkpoint", metadata={"label": "5"})  # lands at 5: a snapshot is due
    assert 5 == event.event_id


# -- 7. one write path ------------------------------------------------------------------------


def test_raw_emit_is_checked_against_the_transition_table(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.request_approval("deploy", phase="ship", approval_id="gate-1")
    with pytest.raises(InvalidTransition, match="awaiting_approval"):
        run.log.emit("workflow_complete")
    with pytest.raises(ApprovalNotFound, match="no pending approval 'nope'"):
        run.log.emit("approval_resolved", metadata={"approval_id": "nope", "action": "approve", "client_token": "t"})
    assert "awaiting_approval" == run.state().status
    assert 2 == run.state().last_event_id


def test_gateway_and_cli_emit_go_through_the_same_checks(store: RunStore, tmp_path: Path) -> None:
    import io

    from faber_runlog import Gateway
    from faber_runlog._frontends.cli import main

    run = store.create_run("acme", "web")
    run.start()
    run.request_approval("deploy", phase="ship", approval_id="gate-1")
    with pytest.raises(InvalidTransition):
        Gateway(store=store).emit(run.id, "workflow_complete")
    if store.url.startswith(("s3://", "memory://")):
        return  # the CLI reaches a store by its URL: the local folder shows it
    err = io.StringIO()
    assert 1 == main(["--root", store.url, "emit", run.id, "workflow_complete"], out=io.StringIO(), err=err)
    assert "awaiting_approval" in err.getvalue()
    assert ("awaiting_approval", 2) == (run.state().status, run.state().last_event_id)


def test_the_unchecked_escape_hatch_still_refuses_a_sealed_log(store: RunStore) -> None:
    run = _ended_run(store)
    run.log.emit("workflow_complete", unchecked=True)  # an importer copying a log as it was
    consolidate(store, run.id)
    with pytest.raises(RunArchived):
        store.get_run(run.id).log.emit("checkpoint", metadata={"label": "x"}, unchecked=True)


def test_the_lifecycle_docs_show_the_transition_table_of_the_code() -> None:
    page = (Path(__file__).parents[1] / "docs" / "lifecycle.md").read_text()
    begin, end = "<!-- transitions:begin -->\n", "<!-- transitions:end -->"
    assert markdown() == page[page.index(begin) + len(begin) : page.index(end)]


# -- 8. one meaning of failed --------------------------------------------------------------------


def test_a_failed_step_leaves_the_run_failing_not_ended_and_a_retry_goes_on(store_factory: Any, tmp_path: Path) -> None:
    store = store_factory()
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    state = run.state()
    assert ("failing", True, "compile") == (state.status, state.is_resumable, state.failed_step.name)
    assert [] == store.list_runs(status="failed")
    assert [] == Archiver(store, RunStore(str(tmp_path / "a")), progress=False).archive_finished()
    run.retry_step("build", "compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.complete()
    assert "completed" == store.get_run(run.id).state().status


# -- 9. list_runs reports what the log says -------------------------------------------------------


def test_list_runs_does_not_report_a_status_older_than_the_log(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    older = store.storage.read(RunLayout(run.run_id).state)
    run.log.emit("step_start", phase="build", step="compile")
    run.fail("exit 2")
    store.storage.replace(RunLayout(run.run_id).state, older or b"")  # the older snapshot lands last
    assert ["failed"] == [s.status for s in store.list_runs()]
    assert [run.id] == [s.run_id for s in store.list_runs(status="failed")]


# -- 10. one damaged run does not stop store-wide work ----------------------------------------------


@pytest.mark.rule("protocol", 10)
def test_a_damaged_run_is_reported_and_the_others_are_still_listed_and_swept(store_factory: Any) -> None:
    store = store_factory(lease_ttl=0.05)
    ok = store.create_run("acme", "web")
    broken = store.create_run("acme", "web")
    store.storage.replace(RunLayout(broken.run_id).metadata, b"{not json")
    store.storage.delete(RunLayout(broken.run_id).summary)  # its summary carried the metadata a listing shows
    torn = store.create_run("acme", "web")
    for run in (ok, torn):
        run.start()
        run.heartbeat(ttl=0.05)
    store.storage.replace(RunLayout(torn.run_id).event(1), b"{torn")
    listed = store.list_runs()
    # A listing reads summaries, not events: the torn tail is found by whatever reads the log (verify, sweep).
    assert {ok.id, torn.id} == {s.run_id for s in listed}
    assert {broken.id} == {p.run_id for p in listed.problems}
    time.sleep(0.1)
    swept = store.sweep_stale()
    assert [ok.id] == [s.run_id for s in swept]
    assert [torn.id] == [rid for rid, _ in swept.problems]
    assert "failed" == store.get_run(ok.id).state().status


def test_a_corrupt_concurrency_key_claim_does_not_block_the_key_for_ever(store: RunStore) -> None:
    from faber_runlog._services.lifecycle import key_folder

    first = store.create_run("acme", "web", concurrency_key="deploy-prod")
    first.start()
    for name in store.storage.list_names(key_folder("deploy-prod")):
        store.storage.replace(f"{key_folder('deploy-prod')}/{name}", b"{corrupt")
    second = store.create_run("acme", "web", concurrency_key="deploy-prod")
    assert "created" == second.state().status


# -- 11. bounded snapshots ----------------------------------------------------------------------


def test_snapshot_bytes_stay_a_small_multiple_of_the_event_bytes_when_the_state_grows(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"), snapshot_every=50, fsync=False)
    run = store.create_run("acme", "web")
    run.start()
    for i in range(600):  # every event adds a step: the state grows with the run
        run.log.emit("step_start" if i % 2 == 0 else "step_complete", phase="build", step=f"s{i // 2}")
    folder = Path(store.storage.path(run.id))
    events = sum(p.stat().st_size for p in (folder / "events").iterdir())
    snaps = sum(p.stat().st_size for p in (folder / "snapshots").iterdir()) + (folder / "state.json").stat().st_size
    assert len(list((folder / "snapshots").iterdir())) <= 2
    assert (events + snaps) / events <= 3.0
    assert 60 == len(run.state(at=120).phases["build"].steps)
