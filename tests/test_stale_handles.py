"""Two handles on one run: a transition is checked against the state at the tail, never a handle's stale one.

A handle that last looked at the run before another handle (in this process or another) moved it
must neither be refused against what it saw (a `failed` run another handle resumed) nor have a
transition accepted against it (a step on a run another handle completed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_store

from faber_runlog import InvalidTransition, Resumer, Run, RunStore

pytestmark = pytest.mark.backends("memory", "local")

REPO = Path(__file__).resolve().parents[1]


def _failed_run(store: RunStore) -> Run:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="boom")
    run.log.emit("workflow_error", error="boom")
    return run


def _second_handle(store: RunStore) -> RunStore:
    """Another RunStore on the same root (memory is shared within the process, local on disk)."""
    return RunStore(store.url)


@pytest.mark.rule("protocol", 3)
def test_a_handle_that_saw_the_run_fail_appends_after_another_handle_resumed_it(store: RunStore) -> None:
    a = _failed_run(store)
    assert "failed" == a.state().status  # handle a has seen the failure
    Resumer(_second_handle(store)).resume(a.id)

    event = a.log.emit("step_start", phase="build", step="compile")

    assert (6, "running") == (event.event_id, a.state().status)


@pytest.mark.rule("protocol", 3)
def test_a_handle_that_saw_the_run_running_is_refused_after_another_handle_completed_it(store: RunStore) -> None:
    a = store.create_run("acme", "web")
    a.start()
    assert "running" == a.state().status
    other = _second_handle(store).get_run(a.id)
    other.complete()

    with pytest.raises(InvalidTransition) as refused:
        a.log.emit("step_start", phase="build", step="compile")

    assert ("completed", 2) == (refused.value.status, refused.value.last_event_id)
    assert 2 == a.log.last_event_id()


def _resolve(run: Run, approval_id: str, token: str) -> int:
    meta = {"approval_id": approval_id, "action": "approve", "client_token": token}
    return run.log.emit("approval_resolved", metadata=meta).event_id


def test_a_handle_decides_an_approval_another_handle_requested(store: RunStore) -> None:
    a = store.create_run("acme", "web")
    a.start()
    assert "running" == a.state().status
    _second_handle(store).get_run(a.id).request_approval("review", phase="build", approval_id="gate-1")

    assert 3 == _resolve(a, "gate-1", "t1")

    assert "running" == a.state().status
    with pytest.raises(InvalidTransition) as refused:  # and a real refusal still stands, against the tail
        _resolve(a, "gate-1", "t2")
    assert ("running", 3) == (refused.value.status, refused.value.last_event_id)


def test_a_handle_that_saw_one_gate_decides_the_next_gate_another_handle_opened(store: RunStore) -> None:
    a = store.create_run("acme", "web")
    a.start()
    a.request_approval("review", phase="build", approval_id="gate-1")
    assert "awaiting_approval" == a.state().status  # a has seen gate 1 pending
    b = _second_handle(store).get_run(a.id)
    b.decide("gate-1", "approve", client_token="b1")
    b.request_approval("deploy", phase="build", approval_id="gate-2")

    # a's own view is still "awaiting_approval, gate-1 pending": the status allows it, the gate does not
    assert 5 == _resolve(a, "gate-2", "a1")

    assert "running" == a.state().status


def test_a_handle_appends_after_another_process_resumed_the_run(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = make_store("local", tmp_path, request)
    a = _failed_run(store)
    assert "failed" == a.state().status
    code = f"from faber_runlog import Resumer, RunStore; Resumer(RunStore({store.url!r})).resume({str(a.id)!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)

    event = a.log.emit("step_start", phase="build", step="compile")

    assert (6, "running") == (event.event_id, a.state().status)
