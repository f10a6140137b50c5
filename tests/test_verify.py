"""verify() pinpoints bad events; reconstruct() compares and repairs state.json and snapshots."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from faber_runlog import Resumer, Run, RunState, RunStore, StateDifference
from faber_runlog._base import codec as _codec
from faber_runlog._domain.state import fold_all
from faber_runlog._format.layout import RunLayout, decode_segment, decode_snapshot, encode_segment, encode_snapshot

# Services over the storage contract (pinned on every backend elsewhere): memory and local, a few tests on S3.
pytestmark = pytest.mark.backends("memory", "local")


def _edit_snapshot(store: RunStore, key: str, edit: Any) -> None:
    """Rewrite the snapshot at ``key`` as an intact (checksummed) snapshot whose state ``edit`` changed."""
    data, fp = decode_snapshot(store.storage.read(key) or b"")
    edit(data)
    store.storage.replace(key, encode_snapshot(data, fp))


def _failed_run(store: RunStore, *, ended: bool = False) -> Run:
    """Six events, the last a step error: the run is ``failing``; with ``ended`` a 7th (workflow_error) fails it."""
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.log.emit("step_start", phase="build", step="test")
    run.log.emit("step_error", phase="build", step="test", error="red")
    if ended:
        run.fail("red")
    run.log.snapshot()  # state.json follows the last event (status changes alone only write the summary)
    return run


def test_verify_accepts_a_healthy_run(store: RunStore) -> None:
    run = _failed_run(store)
    report = Resumer(store).verify(run.id)
    assert (True, 6, 6, None, ()) == (report.ok, report.events, report.last_event_id, report.first, report.problems)


def test_verify_pinpoints_a_missing_sequence_number(store: RunStore) -> None:
    run = _failed_run(store)
    store.storage.delete(RunLayout(run.run_id).event(3))
    report = Resumer(store).verify(run.id)
    first = report.first
    assert first is not None
    assert (False, 3, "missing", store.storage.path(RunLayout(run.run_id).event(3))) == (
        report.ok,
        first.seq,
        first.kind,
        first.path,
    )
    assert run.id in first.message and "event 2" in first.message
    assert [3] == [p.seq for p in report.problems]


def test_verify_pinpoints_a_schema_invalid_event(store: RunStore) -> None:
    run = _failed_run(store)
    layout = RunLayout(run.run_id)
    bad = {
        "event_id": 7,
        "type": "step_start",
        "run_id": run.id,
        "timestamp": "2024-01-01T00:00:00Z",
        "schema_version": 1,
        "phase": "build",
        "metadata": {},
    }
    assert store.storage.create(layout.event(7), _codec.dumps(bad))  # no "step": invalid
    run.log.emit("checkpoint", metadata={"label": "after"})
    report = Resumer(store).verify(run.id)
    assert [(7, "invalid", store.storage.path(layout.event(7)))] == [(p.seq, p.kind, p.path) for p in report.problems]
    assert "step" in report.problems[0].message
    assert 8 == report.last_event_id


def test_verify_reports_unreadable_mismatched_and_stray_files_in_order(store: RunStore) -> None:
    run = _failed_run(store)
    layout = RunLayout(run.run_id)
    store.storage.replace(layout.event(5), b'{"event_id": 5, "type": "step_st')
    body = json.loads(store.storage.read(layout.event(2)) or b"")
    store.storage.replace(layout.event(4), _codec.dumps(body))  # event 2's body under name 4
    store.storage.replace(f"{layout.events}/notes.txt", b"hello")
    report = Resumer(store).verify(run.id)
    assert [(4, "mismatch"), (5, "unreadable"), (None, "stray")] == [(p.seq, p.kind) for p in report.problems]
    assert report.to_dict() == json.loads(json.dumps(report.to_dict()))


def test_reconstruct_matches_a_healthy_run(store: RunStore) -> None:
    run = _failed_run(store)
    state, report = Resumer(store).reconstruct(run.id)
    assert fold_all(RunState(run_id=run.id), run.log.read()) == state
    assert (True, "ok", (), 6, False) == (
        report.ok,
        report.stored,
        report.differences,
        report.last_event_id,
        report.repaired,
    )


def test_reconstruct_detects_a_hand_edited_state_and_repairs_it(store: RunStore) -> None:
    run = _failed_run(store)
    layout = RunLayout(run.run_id)

    def edit(data: dict[str, Any]) -> None:
        data["status"] = "completed"
        data["phases"]["build"]["steps"]["test"]["status"] = "completed"
        data["errors"][0]["message"] = "green"

    _edit_snapshot(store, layout.state, edit)  # checksum redone: only the fold can tell it lies
    r = Resumer(store)
    state, report = r.reconstruct(run.id)
    assert ("different", False) == (report.stored, report.ok)
    assert [
        StateDifference("status", "completed", "failing"),
        StateDifference("phases.build.steps.test.status", "completed", "failed"),
        StateDifference("errors[0].message", "green", "red"),
    ] == list(report.differences)
    assert "failing" == state.status
    assert report.to_dict() == json.loads(json.dumps(report.to_dict()))

    _, repaired = r.reconstruct(run.id, repair=True)
    assert (True, "different") == (repaired.repaired, repaired.stored)
    assert (True, "ok") == (r.reconstruct(run.id)[1].ok, r.reconstruct(run.id)[1].stored)
    assert "failing" == store.get_run(run.id).state().status


def test_reconstruct_repairs_a_missing_or_unreadable_state(store: RunStore) -> None:
    run = _failed_run(store)
    layout = RunLayout(run.run_id)
    r = Resumer(store)
    damages: tuple[tuple[Callable[[], object], str], ...] = (
        (lambda: store.storage.delete(layout.state), "missing"),
        (lambda: store.storage.replace(layout.state, b"{not json"), "unreadable"),
    )
    for damage, expected in damages:
        damage()
        state, report = r.reconstruct(run.id, repair=True)
        assert (expected, True, None) == (report.stored, report.repaired, report.stored_last_event_id)
        assert RunState.from_dict(decode_snapshot(store.storage.read(layout.state) or b"")[0]) == state


def test_a_lagging_state_json_is_stale_not_different(store_factory: Any) -> None:
    store = store_factory(snapshot_every=1000)
    run = _failed_run(store)
    for i in range(3):
        run.log.emit("checkpoint", metadata={"label": str(i)})  # no status change: state.json not rewritten
    _, report = Resumer(store).reconstruct(run.id)
    assert (True, "ok", 6, 9) == (report.ok, report.stored, report.stored_last_event_id, report.last_event_id)


def test_a_state_json_claiming_events_that_do_not_exist_is_different(store: RunStore) -> None:
    run = _failed_run(store)
    layout = RunLayout(run.run_id)
    _edit_snapshot(store, layout.state, lambda data: data.update(last_event_id=9))
    _, report = Resumer(store).reconstruct(run.id)
    assert [StateDifference("last_event_id", 9, 6)] == list(report.differences)


def test_reconstruct_finds_and_repairs_a_bad_historical_snapshot(store_factory: Any) -> None:
    store = store_factory(snapshot_every=2)
    run = _failed_run(store)
    layout = RunLayout(run.run_id)
    assert [2] == [int(n[:20]) for n in store.storage.list_names(layout.snapshots)]  # older ones are 4 K apart
    good = store.get_run(run.id).state(at=2)
    _edit_snapshot(store, layout.snapshot(2), lambda data: data.update(current_step="nonsense"))
    r = Resumer(store)
    _, report = r.reconstruct(run.id)
    assert ((2,), False, "ok") == (report.bad_snapshots, report.ok, report.stored)
    _, report = r.reconstruct(run.id, repair=True)
    assert (True, (2,)) == (report.repaired, report.bad_snapshots)
    assert good == store.get_run(run.id).state(at=2)
    assert r.reconstruct(run.id)[1].ok


def _consolidated_without_event_files(store: RunStore) -> Run:
    from faber_runlog._services.archive import consolidate

    run = _failed_run(store, ended=True)
    record = consolidate(store, run.id)
    layout = RunLayout(run.run_id)
    assert 7 == record.last_seq
    for seq in range(1, 8):  # as cleanup does: the seal (event 8) stays
        store.storage.delete(layout.event(seq))
    return run


@pytest.mark.backends("memory", "local", "s3")
def test_verify_checks_a_consolidated_run_from_its_events_jsonl(store: RunStore) -> None:
    run = _consolidated_without_event_files(store)
    report = Resumer(store).verify(run.id)
    assert (True, 8, 8) == (report.ok, report.events, report.last_event_id)  # 7 lines and the seal


def test_verify_pinpoints_a_damaged_line_of_events_jsonl(store: RunStore) -> None:
    run = _consolidated_without_event_files(store)
    layout = RunLayout(run.run_id)
    lines = (store.storage.read(layout.jsonl) or b"").split(b"\n")
    lines[3] = b'{"event_id": 4, "type": "step_st'
    store.storage.replace(layout.jsonl, b"\n".join(lines))
    first = Resumer(store).verify(run.id).first
    assert first is not None
    assert (4, "unreadable", f"{store.storage.path(layout.jsonl)} line 4") == (first.seq, first.kind, first.path)


def test_repairing_a_consolidated_run_keeps_it_sealed(store: RunStore) -> None:
    from faber_runlog import RunArchived

    run = _consolidated_without_event_files(store)
    layout = RunLayout(run.run_id)
    _edit_snapshot(store, layout.state, lambda data: data.update(status="completed"))  # hand-edited
    _, report = Resumer(store).reconstruct(run.id, repair=True)
    repaired, _ = decode_snapshot(store.storage.read(layout.state) or b"")
    assert ("different", True) == (report.stored, report.repaired)
    assert (8, "failed") == (repaired["sealed_at"], repaired["status"])
    assert "failed" == store.get_run(run.id).state().status
    with pytest.raises(RunArchived):
        store.get_run(run.id).log.emit("checkpoint", metadata={"label": "late"})


def test_an_integral_float_duration_is_not_a_difference(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    run.log.emit("phase_complete", phase="build", duration_ms=1500)
    run.complete()
    run.log.snapshot()  # state.json now holds the phase
    layout = RunLayout(run.run_id)
    _edit_snapshot(store, layout.state, lambda data: data["phases"]["build"].update(duration_ms=1500.0))
    assert b'"duration_ms":1500.0' in (store.storage.read(layout.state) or b"")
    _, report = Resumer(store).reconstruct(run.id)
    assert ("ok", ()) == (report.stored, report.differences)


def test_verify_reports_a_truncated_events_jsonl_against_its_record(store: RunStore) -> None:
    run = _consolidated_without_event_files(store)
    layout = RunLayout(run.run_id)
    body = store.storage.read(layout.jsonl) or b""
    store.storage.replace(layout.jsonl, b"".join(body.splitlines(keepends=True)[:4]))
    report = Resumer(store).verify(run.id)
    first = report.first
    assert first is not None
    assert (False, 5, "missing") == (report.ok, first.seq, first.kind)
    assert "holds only 4 lines" in first.message and "1..7" in first.message


def test_verify_reports_an_unterminated_last_line(store: RunStore) -> None:
    run = _consolidated_without_event_files(store)
    layout = RunLayout(run.run_id)
    store.storage.replace(layout.jsonl, (store.storage.read(layout.jsonl) or b"").rstrip(b"\n"))
    first = Resumer(store).verify(run.id).first
    assert first is not None
    assert (7, "missing") == (first.seq, first.kind)
    assert "unterminated" in first.message


def test_verify_checks_the_lines_readers_use_after_the_first_missing_file(store: RunStore) -> None:
    from faber_runlog._services.archive import consolidate

    run = _failed_run(store, ended=True)
    consolidate(store, run.id)
    layout = RunLayout(run.run_id)
    store.storage.delete(layout.event(3))  # readers take events 3.. from events.jsonl
    lines = (store.storage.read(layout.jsonl) or b"").splitlines(keepends=True)
    lines[4] = b'{"event_id": 5, "ty\n'
    store.storage.replace(layout.jsonl, b"".join(lines))
    report = Resumer(store).verify(run.id)
    assert [(5, "unreadable", f"{store.storage.path(layout.jsonl)} line 5")] == [
        (p.seq, p.kind, p.path) for p in report.problems
    ]


def test_an_events_jsonl_without_its_record_is_ignored_by_verify(store: RunStore) -> None:
    run = _failed_run(store)
    layout = RunLayout(run.run_id)
    store.storage.replace(layout.jsonl, b"left over from a consolidation that was cut short\n")
    store.storage.delete(layout.event(6))
    report = Resumer(store).verify(run.id)
    assert (5, 5, ()) == (report.events, report.last_event_id, report.problems)


def test_repair_without_any_state_json_still_keeps_a_consolidated_run_sealed(store: RunStore) -> None:
    from faber_runlog import RunArchived

    run = _consolidated_without_event_files(store)
    layout = RunLayout(run.run_id)
    store.storage.delete(layout.state)
    _, report = Resumer(store).reconstruct(run.id, repair=True)
    assert ("missing", True) == (report.stored, report.repaired)
    with pytest.raises(RunArchived):
        store.get_run(run.id).log.emit("checkpoint", metadata={"label": "late"})
    assert (8, 8) == (store.get_run(run.id).state().last_event_id, store.get_run(run.id).state().sealed_at)


@pytest.mark.backends("memory", "local", "s3")
def test_reconstruct_checks_the_summary_and_repair_rewrites_it(store: RunStore) -> None:
    run = _failed_run(store, ended=True)
    layout = RunLayout(run.run_id)
    r = Resumer(store)
    assert ("ok", True) == (r.reconstruct(run.id)[1].summary, r.reconstruct(run.id)[1].ok)
    behind = store.storage.read(layout.summary)
    assert behind is not None
    run.log.emit("checkpoint", metadata={"label": "after"})
    store.storage.replace(layout.summary, behind)  # lagging, harmlessly (S3 rewrites it on status changes only)
    assert ("stale", True) == (r.reconstruct(run.id)[1].summary, r.reconstruct(run.id)[1].ok)
    for damage, expected in ((b"{broken", "unreadable"), (None, "missing")):
        if damage is None:
            store.storage.delete(layout.summary)
        else:
            store.storage.replace(layout.summary, damage)
        _, report = r.reconstruct(run.id)
        assert (expected, False) == (report.summary, report.ok)
    _, repaired = r.reconstruct(run.id, repair=True)
    assert (True, "missing") == (repaired.repaired, repaired.summary)
    assert ("ok", True) == (r.reconstruct(run.id)[1].summary, r.reconstruct(run.id)[1].ok)
    assert [("failed", 8)] == [(s.status, s.last_event_id) for s in store.list_runs()]


@pytest.mark.parametrize("damage", ["flipped", "forged"])
def test_reconstruct_finds_a_segment_that_disagrees_with_its_files_and_repair_rewrites_it(
    store_factory: Any, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory(segment_every=3)
    run = _failed_run(store)  # six events: segments 1..3 and 4..6
    layout = RunLayout(run.run_id)
    good = store.storage.read(layout.segment(1, 3)) or b""
    if damage == "flipped":  # its checksum no longer holds
        store.storage.replace(layout.segment(1, 3), good.replace(b"workflow_start", b"workflow_stert"))
    else:  # intact and checksummed, but its lines are not events 1..3 of the files
        lines = decode_segment(good, run.id, 1, 3).splitlines()
        store.storage.replace(layout.segment(1, 3), encode_segment(run.id, 1, [lines[0], lines[2], lines[1]]))
    r = Resumer(store)
    _, report = r.reconstruct(run.id)
    assert (((1, 3),), False, False) == (report.bad_segments, report.ok, report.repaired)
    _, report = r.reconstruct(run.id, repair=True)
    assert (((1, 3),), True) == (report.bad_segments, report.repaired)
    assert good == store.storage.read(layout.segment(1, 3))
    caplog.clear()
    with caplog.at_level("WARNING", logger="faber_runlog._log.eventlog"):
        assert list(range(1, 7)) == [e.event_id for e in store.get_run(run.id).log.read()]
    assert "ignoring segment" not in caplog.text
    assert r.reconstruct(run.id)[1].ok
