"""Run lifecycle: transitions, approvals, exclusive runs, the stale-run sweep and the status view."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import (
    ActiveRunExists,
    ApprovalConflict,
    ApprovalNotFound,
    InvalidEvent,
    InvalidTransition,
    LeaseLost,
    Refused,
    Run,
    RunStore,
    TooManyActiveRuns,
)
from faber_runlog._domain.transitions import ACTIONS as ALLOWED
from faber_runlog._log.lease import acquire_lease, read_lease
from faber_runlog._services.lifecycle import SWEEP_REASON, key_folder
from faber_runlog._services.report import read_report

# Application tests: the storage and log contract is pinned on every backend elsewhere.
pytestmark = pytest.mark.backends("memory")

WORKERS = Path(__file__).with_name("_lifecycle_workers.py")
STATUSES = ("created", "running", "paused", "awaiting_approval", "completed", "failed", "cancelled")


def in_status(store: RunStore, status: str) -> Run:
    """A fresh run brought to ``status`` through the lifecycle API."""
    run = store.create_run("acme", "web")
    if status == "cancelled":
        run.cancel()
    elif status != "created":
        run.start()
        if status == "paused":
            run.pause()
        elif status == "awaiting_approval":
            run.request_approval("review", approval_id="gate-1")
        elif status == "completed":
            run.complete()
        elif status == "failed":
            run.fail("boom")
    assert status == run.state().status
    return run


ACTIONS: dict[str, tuple[Callable[[Run], Any], str | None]] = {
    "start": (lambda r: r.start(), "running"),
    "pause": (lambda r: r.pause(), "paused"),
    "unpause": (lambda r: r.unpause(), None),  # back to where it paused from
    "cancel": (lambda r: r.cancel("user"), "cancelled"),
    "complete": (lambda r: r.complete(), "completed"),
    "fail": (lambda r: r.fail("bad"), "failed"),
    "request_approval": (lambda r: r.request_approval("second"), "awaiting_approval"),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_each_action_is_legal_exactly_from_its_statuses_and_illegal_ones_write_nothing(
    store: RunStore, action: str
) -> None:
    do, expected = ACTIONS[action]
    for status in STATUSES:
        run = in_status(store, status)
        before = run.state()
        if status in ALLOWED[action][1]:
            do(run)
            after = run.state()
            assert (expected or before.paused_from) == after.status, (action, status)
            assert before.last_event_id + 1 == after.last_event_id
        else:
            with pytest.raises(InvalidTransition) as info:
                do(run)
            assert (run.id, status, action) == (info.value.run_id, info.value.status, info.value.action)
            assert run.id in str(info.value) and repr(status) in str(info.value)
            assert before.last_event_id == run.state().last_event_id


@pytest.mark.parametrize("origin", ["created", "running", "awaiting_approval"])
def test_pause_remembers_where_it_paused_from_and_resume_returns_there(store: RunStore, origin: str) -> None:
    run = in_status(store, origin)
    ev = run.pause("lunch")
    assert origin == ev.metadata["paused_from"]
    assert ("paused", origin) == (run.state().status, run.state().paused_from)
    run.unpause()
    state = store.get_run(run.id).state()
    assert (origin, None) == (state.status, state.paused_from)


def test_resume_of_a_failed_run_points_to_the_resumer(store: RunStore) -> None:
    run = in_status(store, "failed")
    with pytest.raises(InvalidTransition, match="Resumer"):
        run.unpause()


def test_a_gate_requested_while_the_writer_pauses_is_still_waiting_after_resume(store: RunStore) -> None:
    run = in_status(store, "paused")
    gate: dict[str, Any] = {"type": "approval_requested", "metadata": {"approval_id": "late", "gate": "g"}}
    last = run.state().last_event_id
    # A checked append refuses to open a gate on a paused run and writes nothing ...
    with pytest.raises(InvalidTransition, match="paused"):
        run.log.emit("approval_requested", metadata=gate["metadata"])
    assert last == store.get_run(run.id).state().last_event_id
    # ... but a log that holds one (an old log, an importer's unchecked copy) still folds to a waiting gate.
    run.log.emit(**gate, unchecked=True)
    run.unpause()
    assert "awaiting_approval" == run.state().status


# -- phases and steps -----------------------------------------------------------


def test_failed_phase_and_step_can_be_retried_and_skipped(store: RunStore) -> None:
    run = in_status(store, "running")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    with pytest.raises(InvalidTransition, match=r"build/lint .* 'absent'"):
        run.retry_step("build", "lint")
    run.retry_step("build", "compile")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.skip_step("build", "docs", reason="no docs")
    run.log.emit("phase_error", phase="build", error="flaky")
    run.retry_phase("build")
    state = run.state()
    assert ("running", 2, "running") == (state.status, state.phases["build"].attempts, state.phases["build"].status)
    assert (2, "completed") == (state.step("build", "compile").attempts, state.step("build", "compile").status)  # type: ignore[union-attr]
    assert "skipped" == state.step("build", "docs").status  # type: ignore[union-attr]
    run.skip_phase("deploy", reason="manual")
    assert "skipped" == run.state().phases["deploy"].status
    run.log.emit("phase_complete", phase="build")
    with pytest.raises(InvalidTransition, match="'completed'"):
        run.retry_phase("build")
    with pytest.raises(InvalidTransition):
        run.skip_phase("build")


# -- approvals -------------------------------------------------------------------


def gated(store: RunStore, *gates: str) -> Run:
    run = in_status(store, "running")
    run.log.emit("phase_start", phase="review")
    for g in gates:
        run.request_approval(g, phase="review", approval_id=g, payload={"diff": "+1"})
    return run


def test_approve_completes_the_gated_phase_and_resumes_the_run(store: RunStore) -> None:
    run = gated(store, "a1")
    assert ("awaiting_approval", "awaiting_approval") == (run.state().status, run.state().phases["review"].status)
    ev = run.decide("a1", "approve", client_token="tok", comment="LGTM", user="alice")
    state = run.state()
    assert ("running", "completed") == (state.status, state.phases["review"].status)
    a = state.approvals["a1"]
    assert ("approved", "approve", "LGTM", "alice", ev.event_id) == (
        a.status,
        a.action,
        a.comment,
        a.decided_by,
        a.resolved_event_id,
    )


def test_the_run_waits_until_every_pending_gate_is_approved(store: RunStore) -> None:
    run = gated(store, "a1", "a2")
    run.decide("a1", "approve", client_token="t1")
    assert "awaiting_approval" == run.state().status
    run.decide("a2", "approve", client_token="t2")
    assert "running" == run.state().status


def test_request_changes_sends_the_phase_back_to_pending(store: RunStore) -> None:
    run = gated(store, "a1")
    run.decide("a1", "request_changes", client_token="tok", comment="rename it")
    state = run.state()
    assert ("running", "pending", "review") == (state.status, state.phases["review"].status, state.current_phase)
    assert "changes_requested" == state.approvals["a1"].status


def test_reject_fails_the_run_and_closes_other_gates(store: RunStore) -> None:
    run = gated(store, "a1", "a2")
    run.decide("a1", "reject", client_token="tok", comment="no")
    state = run.state()
    assert ("failed", "approval_reject", "failed") == (state.status, state.status_reason, state.phases["review"].status)
    assert {"a1": "rejected", "a2": "aborted"} == {k: a.status for k, a in state.approvals.items()}
    assert "approval a1 (a1) rejected: no" == state.errors[-1].message
    assert "failed" == (read_report(store.storage, run.id) or {}).get("status")


def test_abort_cancels_the_run_and_closes_every_pending_approval(store: RunStore) -> None:
    run = gated(store, "a1", "a2", "a3")
    run.decide("a2", "abort", client_token="tok")
    state = run.state()
    assert ("cancelled", "approval_abort") == (state.status, state.status_reason)
    assert {"a1": "aborted", "a2": "aborted", "a3": "aborted"} == {k: a.status for k, a in state.approvals.items()}
    assert "cancelled" == (read_report(store.storage, run.id) or {}).get("status")


def test_same_token_same_action_replays_without_writing(store: RunStore) -> None:
    run = gated(store, "a1")
    first = run.decide("a1", "reject", client_token="tok")
    last = run.state().last_event_id
    again = run.decide("a1", "reject", client_token="tok")
    assert first == again
    assert last == run.state().last_event_id


def test_same_token_other_action_is_a_conflict_and_writes_nothing(store: RunStore) -> None:
    run = gated(store, "a1")
    run.decide("a1", "approve", client_token="tok")
    last = run.state().last_event_id
    with pytest.raises(ApprovalConflict, match="already used to approve") as info:
        run.decide("a1", "reject", client_token="tok")
    assert (run.id, "a1") == (info.value.run_id, info.value.approval_id)
    with pytest.raises(ApprovalConflict, match="already approved"):
        run.decide("a1", "reject", client_token="other")
    assert last == run.state().last_event_id


def test_decisions_on_unknown_gates_bad_actions_or_paused_runs_are_refused(store: RunStore) -> None:
    run = gated(store, "a1")
    with pytest.raises(ApprovalNotFound, match="nope"):
        run.decide("nope", "approve", client_token="t")
    with pytest.raises(InvalidEvent, match="maybe"):
        run.decide("a1", "maybe", client_token="t")
    with pytest.raises(InvalidEvent, match="client_token"):
        run.decide("a1", "approve", client_token="")
    run.pause()
    last = run.state().last_event_id
    with pytest.raises(InvalidTransition, match=r"unpause it first \(run.unpause\(\)\)"):
        run.decide("a1", "approve", client_token="t")
    assert last == run.state().last_event_id
    run.decide("a1", "abort", client_token="t")  # a paused run may still be stopped
    assert "cancelled" == run.state().status


def test_request_approval_with_the_same_id_replays_and_another_gate_conflicts(store: RunStore) -> None:
    run = gated(store, "a1")
    again = run.request_approval("a1", phase="review", approval_id="a1")
    assert again.event_id == run.state().approvals["a1"].requested_event_id
    with pytest.raises(ApprovalConflict):
        run.request_approval("other", approval_id="a1")


# -- exclusive runs ------------------------------------------------------------------


def test_second_run_with_the_same_key_is_refused_naming_the_holder(store: RunStore) -> None:
    first = store.create_run("acme", "web", concurrency_key="/repo:main")
    first.start()
    with pytest.raises(ActiveRunExists) as info:
        store.create_run("acme", "web", concurrency_key="/repo:main")
    assert (first.id, "running", "/repo:main") == (info.value.run_id, info.value.status, info.value.concurrency_key)
    assert isinstance(info.value, Refused) and not isinstance(info.value, FileExistsError)  # no 0.x base
    assert [first.id] == [s.run_id for s in store.list_runs()]
    other = store.create_run("acme", "web", concurrency_key="/repo:dev")  # another key is free
    first.complete()
    third = store.create_run("acme", "web", concurrency_key="/repo:main")
    assert 3 == len({first.id, other.id, third.id})


def test_a_key_whose_holder_ended_without_releasing_is_taken_over(store: RunStore) -> None:
    first = store.create_run("acme", "web", concurrency_key="k")
    # Ending the run with a bare log (no hook) leaves the claim unreleased, as a crash would.
    from faber_runlog._log.eventlog import EventLog

    EventLog(store.storage, first.run_id).emit("workflow_cancelled")
    second = store.create_run("acme", "web", concurrency_key="k")
    names = store.storage.list_names(key_folder("k"))
    assert ["00000000000000000001.json", "00000000000000000002.json"] == names
    assert second.id == json.loads(store.storage.read(f"{key_folder('k')}/{names[-1]}") or b"{}")["run_id"]


def test_a_key_whose_holder_lease_expired_is_taken_over_and_the_holder_swept(store_factory: Any) -> None:
    store = store_factory(lease_ttl=0.2)
    first = store.create_run("acme", "web", concurrency_key="k")
    first.start()
    lease = read_lease(store.storage, first.run_id)
    assert lease is not None and 1 == len(lease.claims)
    _wait_until(lambda: not (read_lease(store.storage, first.run_id) or lease).is_live())
    second = store.create_run("acme", "web", concurrency_key="k")
    second.heartbeat(ttl=600)  # keep the new holder live whatever the machine's speed
    state = first.state()
    assert ("failed", SWEEP_REASON) == (state.status, state.status_reason)
    with pytest.raises(ActiveRunExists) as info:
        store.create_run("acme", "web", concurrency_key="k")
    assert second.id == info.value.run_id


def test_max_active_runs_is_enforced_and_slots_free_up_when_runs_end(store_factory: Any) -> None:
    store = store_factory(max_active_runs=2)
    a = store.create_run("acme", "web")
    b = store.create_run("acme", "web")
    with pytest.raises(TooManyActiveRuns) as info:
        store.create_run("acme", "web")
    assert (2, {a.id, b.id}) == (info.value.limit, set(info.value.active_run_ids))
    b.cancel()
    c = store.create_run("acme", "web", concurrency_key="x")
    with pytest.raises(ActiveRunExists):
        store.create_run("acme", "web", concurrency_key="x")
    assert {a.id, b.id, c.id} == {s.run_id for s in store.list_runs()}


def test_bad_concurrency_key_is_refused_before_anything_is_written(store: RunStore) -> None:
    with pytest.raises(ValueError, match="concurrency_key"):
        store.create_run("acme", "web", concurrency_key="")
    assert [] == store.list_runs()


def _spawn(spec: dict[str, Any], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKERS), args[0], json.dumps(spec), *args[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(cond: Callable[[], bool], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def test_processes_racing_for_one_key_have_exactly_one_winner(
    shared_store_spec: dict[str, Any], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    procs = [_spawn(shared_store_spec, "start", "repo:main", str(go)) for _ in range(4)]
    time.sleep(0.5)  # let them import and wait at the barrier; the result does not depend on it
    go.write_text("go")
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert 0 == p.returncode, err
        results.append(json.loads(out))
    winners = [r["run_id"] for r in results if r["won"]]
    assert 1 == len(winners)
    assert {winners[0]} == {r["holder"] for r in results if not r["won"]}
    store = RunStore(shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None)
    assert winners == [s.run_id for s in store.list_runs()]


# -- heartbeats and the sweep --------------------------------------------------------


def test_sweep_fails_runs_with_expired_leases_once_and_leaves_live_ones(store: RunStore) -> None:
    stale = gated(store, "g1")
    stale.log.emit("step_start", phase="review", step="read")
    acquire_lease(store.storage, stale.run_id, ttl=0.01, owner="dead")
    live = in_status(store, "running")
    live.heartbeat(ttl=600)
    unleased = in_status(store, "running")
    _wait_until(lambda: not (read_lease(store.storage, stale.run_id) or _never()).is_live())
    swept = store.sweep_stale()
    assert [stale.id] == [s.run_id for s in swept]
    s = swept[0]
    assert ("awaiting_approval", ("review",), ("g1",), "dead") == (
        s.previous_status,
        s.failed_phases,
        s.closed_approvals,
        s.lease_owner,
    )
    state = stale.state()
    assert ("failed", SWEEP_REASON) == (state.status, state.status_reason)
    assert ("failed", "failed", "closed") == (
        state.phases["review"].status,
        state.step("review", "read").status,  # type: ignore[union-attr]
        state.approvals["g1"].status,
    )
    assert read_lease(store.storage, stale.run_id) is None
    assert "failed" == (read_report(store.storage, stale.id) or {}).get("status")
    assert [] == store.sweep_stale()
    assert ("running", "running") == (live.state().status, unleased.state().status)
    assert [] == store.sweep_stale(older_than=3600, include_unleased=True)
    assert [unleased.id] == [x.run_id for x in store.sweep_stale(include_unleased=True, run_ids=[unleased.id])]


def _never() -> Any:
    raise AssertionError("lease vanished")


def test_heartbeat_keeps_the_lease_live_and_stops_when_the_run_ends(store: RunStore) -> None:
    run = in_status(store, "running")
    hb = run.start_heartbeat(interval=0.05, ttl=5)
    _wait_until(lambda: hb.beats >= 2)
    assert [] == store.sweep_stale()
    run.complete()
    assert not hb.running
    assert read_lease(store.storage, run.run_id) is None


@pytest.mark.rule("lease", 5)
def test_a_writer_killed_with_sigkill_is_swept_once_by_two_concurrent_sweepers(
    shared_store_spec: dict[str, Any], tmp_path: Path
) -> None:
    store = RunStore(shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None)
    writer = _spawn(shared_store_spec, "hold", "repo:main", "1.0")
    assert writer.stdout is not None
    run_id = writer.stdout.readline().strip()
    assert run_id, writer.stderr.read() if writer.stderr else ""
    with pytest.raises(ActiveRunExists):
        store.create_run("acme", "web", concurrency_key="repo:main")
    os.kill(writer.pid, signal.SIGKILL)
    writer.communicate(timeout=60)  # waits, and closes its pipes (an unclosed pipe is a ResourceWarning)
    assert -signal.SIGKILL == writer.returncode
    rid = store.get_run(run_id).run_id
    _wait_until(lambda: not (read_lease(store.storage, rid) or _never()).is_live())

    go = tmp_path / "go"
    sweepers = [_spawn(shared_store_spec, "sweep", str(go)) for _ in range(2)]
    time.sleep(0.5)
    go.write_text("go")
    swept: list[str] = []
    for p in sweepers:
        out, err = p.communicate(timeout=120)
        assert 0 == p.returncode, err
        swept += json.loads(out)
    assert [run_id] == swept
    run = store.get_run(run_id)
    events = list(run.log.read())
    errors = [e for e in events if e.type == "workflow_error"]
    assert [SWEEP_REASON] == [e.metadata["reason"] for e in errors]
    state = run.state()
    assert ("failed", "failed", "closed") == (
        state.status,
        state.phases["build"].status,
        state.approvals["review-1"].status,
    )
    assert "failed" == (read_report(store.storage, run_id) or {}).get("status")
    store.create_run("acme", "web", concurrency_key="repo:main")  # the key was released


# -- status view -------------------------------------------------------------------------


def test_status_view_shows_run_phases_approvals_and_the_last_twenty_events(store: RunStore) -> None:
    run = gated(store, "a1")
    for i in range(25):
        run.log.emit("checkpoint", metadata={"label": f"c{i}"})
    run.heartbeat(ttl=60, owner="me")
    view = run.status_view()
    assert ("awaiting_approval", ["review"], ["a1"], ["a1"]) == (
        view.status,
        [p.name for p in view.phases],
        [a.approval_id for a in view.approvals],
        [a.approval_id for a in view.pending_approvals],
    )
    assert list(range(view.last_event_id - 19, view.last_event_id + 1)) == [e.event_id for e in view.events_tail]
    assert "me" == (view.lease.owner if view.lease else None)
    data = view.to_dict()
    assert view.run_id == data["run_id"] and 20 == len(data["events_tail"])
    json.dumps(data)


def test_the_python_examples_in_the_lifecycle_docs_run(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    text = (Path(__file__).parents[1] / "docs" / "lifecycle.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    for block in blocks:
        exec(compile(block, "docs/lifecycle.md", "exec"), {})
    assert "client token 'ui-click-7' was already used to approve" in capsys.readouterr().out


def test_a_sweeper_whose_append_is_fenced_by_another_sweeper_leaves_the_run_to_it(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen in the heartbeat-vs-takeover race: two starters sweep one dead holder; B fences A out (a higher
    # epoch) and fails the run; A's append is refused by the fence. A returns None (the run is swept
    # once); it used to raise LeaseLost out of sweep_stale() / create_run(concurrency_key=...).
    from faber_runlog._log.eventlog import append_event as real
    from faber_runlog._services import lifecycle as _lifecycle

    run = in_status(store, "running")
    acquire_lease(store.storage, run.run_id, ttl=0.05, owner="dead-writer")
    time.sleep(0.1)
    log = store.get_run(run.id).log

    def fenced_after_b(elog: Any, fields: dict[str, Any], **kwargs: Any) -> Any:
        if elog is not log:
            return real(elog, fields, **kwargs)
        b = _lifecycle.sweep_run(store.storage, store.get_run(run.id).log, include_unleased=True)
        assert b is not None  # B swept it
        raise LeaseLost(f"run {run.id} was fenced (as the log says it)", run_id=run.id, epoch=fields["lease_epoch"])

    monkeypatch.setattr(_lifecycle, "append_event", fenced_after_b)
    assert _lifecycle.sweep_run(store.storage, log, include_unleased=True) is None
    monkeypatch.undo()
    errors = [e for e in store.get_run(run.id).log.read() if e.type == "workflow_error"]
    assert [SWEEP_REASON] == [e.metadata["reason"] for e in errors]
