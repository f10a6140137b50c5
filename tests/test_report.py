"""Final reports: written on every terminal status, schema-valid, readable, recoverable."""

from __future__ import annotations

import pytest

from faber_runlog import Run, RunStore
from faber_runlog._format.layout import RunLayout
from faber_runlog._log.eventlog import EventLog
from faber_runlog._services.report import read_report, render_markdown, report_schema, validate_report

# Application tests: the storage and log contract is pinned on every backend elsewhere.
pytestmark = pytest.mark.backends("memory")


def worked_run(store: RunStore) -> Run:
    run = store.create_run("acme", "web", params={"work_id": "220"})
    run.start()
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.log.emit("artifact_create", phase="build", step="compile", metadata={"path": "dist/app.whl"})
    run.log.emit("step_start", phase="build", step="test")
    run.log.emit("step_error", phase="build", step="test", error="3 tests failed: test_login")
    return run


def md(store: RunStore, run: Run) -> str:
    return (store.storage.read(f"{run.id}/report.md") or b"").decode()


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_every_terminal_status_writes_a_valid_report_json_and_md(store: RunStore, end: str) -> None:
    run = worked_run(store)
    assert read_report(store.storage, run.id) is None  # a step failure alone does not end the run
    if end == "complete":
        run.retry_step("build", "test")
        run.log.emit("step_start", phase="build", step="test")
        run.log.emit("step_complete", phase="build", step="test")
        run.log.emit("phase_complete", phase="build")
        run.complete()
    elif end == "fail":
        run.fail("tests keep failing", reason="gave_up")
    else:
        run.retry_step("build", "test")  # a failed run is not cancelled; one being retried is
        run.cancel("user")
    report = read_report(store.storage, run.id)
    assert report is not None
    validate_report(report)
    state = run.state()
    assert (run.id, state.status, True) == (report["run_id"], report["status"], report["complete"])
    assert (run.metadata.params, run.metadata.params_hash) == (report["params"], report["params_hash"])
    assert ["build"] == [p["name"] for p in report["phases"]]
    assert ["compile", "test"] == [s["name"] for s in report["phases"][0]["steps"]]
    assert ["dist/app.whl"] == [a["path"] for a in report["artifacts"]]
    assert state.last_event_id == report["event_tail"][-1]["event_id"] == report["last_event_id"]
    assert report["duration_ms"] >= 0
    assert f"# Run {run.id}" in md(store, run) and f"**Status:** {state.status}" in md(store, run)


def test_report_md_shows_the_failed_step_and_its_error(store: RunStore) -> None:
    run = worked_run(store)
    run.fail("build failed")
    text = md(store, run)
    assert "| &nbsp;&nbsp;test | failed | 1 |" in text
    assert "**build/test** (step_error, event 7): 3 tests failed: test_login" in text
    assert "## Failures" in text and "## Artifacts" in text


def test_report_lists_approvals_with_their_decisions(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.request_approval("security-review", phase="review", approval_id="sec-1")
    run.decide("sec-1", "reject", client_token="t", comment="leaks a token", user="bob")
    report = read_report(store.storage, run.id) or {}
    assert [("sec-1", "rejected", "reject", "bob")] == [
        (a["approval_id"], a["status"], a["action"], a["decided_by"]) for a in report["approvals"]
    ]
    assert "`sec-1` (gate security-review, phase review): rejected by bob: leaks a token" in md(store, run)


def test_a_report_that_cannot_be_composed_is_replaced_by_a_minimal_one_saying_so(store: RunStore) -> None:
    run = worked_run(store)
    store.storage.delete(RunLayout(run.run_id).metadata)  # composing needs the metadata
    run.fail("x")
    report = read_report(store.storage, run.id)
    assert report is not None
    validate_report(report)
    assert (False, "failed", ["report_compose_failed"]) == (report["complete"], report["status"], report["unresolved"])
    assert "metadata.json" in report["compose_error"]
    assert "Report incomplete" in md(store, run)


def test_recover_writes_reports_for_ended_runs_without_one_only(store: RunStore) -> None:
    done = worked_run(store)
    active = worked_run(store)
    active.retry_step("build", "test")
    done.retry_step("build", "test")  # a step error leaves the run failing: back to running, so it may complete
    # Ended by a bare log (no hook) and its snapshot left behind, as when the
    # writer dies right after appending its last event.
    before = store.storage.read(RunLayout(done.run_id).state)
    EventLog(store.storage, done.run_id).emit("workflow_complete")
    store.storage.replace(RunLayout(done.run_id).state, before or b"{}")
    assert read_report(store.storage, done.id) is None
    assert [done.id] == store.recover_missing_reports()
    report = read_report(store.storage, done.id)
    assert report is not None and "completed" == report["status"]
    assert read_report(store.storage, active.id) is None
    assert [] == store.recover_missing_reports()


def test_a_report_showing_an_older_status_is_rewritten(store: RunStore) -> None:
    run = worked_run(store)
    run.fail("first")
    run.log.emit("workflow_resumed")
    EventLog(store.storage, run.run_id).emit("workflow_cancelled")
    assert [run.id] == store.recover_missing_reports([run.id])
    assert "cancelled" == (read_report(store.storage, run.id) or {}).get("status")


def test_the_schema_refuses_a_report_without_its_required_fields() -> None:
    assert "report_version" in report_schema()["required"]
    with pytest.raises(ValueError, match="report of run x is invalid"):
        validate_report({"run_id": "x", "status": "completed"})
    assert "# Run x" in render_markdown({"run_id": "x", "status": "failed", "complete": False})
