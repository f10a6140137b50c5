"""One surface: what the docs promise holds for the CLI (as a shell user runs it) and for Python."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from faber_runlog import Resumer, RunStore
from faber_runlog._log.lease import try_acquire_lease
from faber_runlog.errors import InvalidEvent, InvalidTransition, RunNotRerunnable

ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``faber-runlog ARGS`` run as a shell user runs it: a new process, this checkout's code."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FABER_RUNLOG_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "faber_runlog", *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def memory_store() -> RunStore:
    return RunStore(f"memory://surface-{uuid.uuid4().hex}")


def _failing(store: RunStore) -> str:
    run = store.create_run("acme", "web", params={"work_id": "220"})
    run.log.emit("workflow_start")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    assert "failing" == run.state().status
    return run.id


def test_a_failing_run_whose_tool_died_is_rerun() -> None:
    store = memory_store()
    parent = _failing(store)
    child = Resumer(store).rerun(parent, params={"work_id": "221"})
    assert (parent, {"work_id": "221"}) == (child.metadata.parent_run_id, child.metadata.params)
    assert "failing" == store.get_run(parent).state().status


def test_a_failing_run_another_live_writer_holds_is_not_rerun() -> None:
    store = memory_store()
    parent = _failing(store)
    assert try_acquire_lease(store.storage, store.get_run(parent).run_id, ttl=300, owner="ci:1") is not None
    with pytest.raises(RunNotRerunnable, match="live writer"):
        Resumer(store).rerun(parent)


def test_asking_again_after_changes_were_requested_opens_a_new_gate_that_can_be_approved() -> None:
    run = memory_store().create_run("acme", "web")
    run.start()
    run.request_approval("deploy", phase="build", approval_id="deploy-220")
    run.decide("deploy-220", "request_changes", client_token="ci-42")
    again = run.request_approval("deploy", phase="build", approval_id="deploy-220")
    assert ("awaiting_approval", "pending") == (run.state().status, run.state().approvals["deploy-220"].status)
    assert again.event_id == run.state().approvals["deploy-220"].requested_event_id
    assert again.event_id == run.request_approval("deploy", phase="build", approval_id="deploy-220").event_id
    run.decide("deploy-220", "approve", client_token="ci-43")
    assert ("running", "approved") == (run.state().status, run.state().approvals["deploy-220"].status)


def test_complete_is_refused_while_work_is_open_and_nothing_is_written() -> None:
    run = memory_store().create_run("acme", "web")
    run.start()
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="link")
    with pytest.raises(InvalidTransition, match="step build/link \\(running\\)"):
        run.complete()
    assert ("running", 3) == (run.state().status, run.state().last_event_id)
    run.log.emit("step_complete", phase="build", step="link")
    run.complete()  # the finished phase is closed by the run's end
    assert ("completed", "completed") == (run.state().status, run.state().phases["build"].status)


def test_fail_and_cancel_close_open_work() -> None:
    for action, status in (("fail", "failed"), ("cancel", "cancelled")):
        run = memory_store().create_run("acme", "web")
        run.start()
        run.log.emit("phase_start", phase="build")
        run.log.emit("step_start", phase="build", step="link")
        run.fail("disk full") if action == "fail" else run.cancel()
        state = run.state()
        assert (status, status, status) == (
            state.status,
            state.phases["build"].status,
            state.phases["build"].steps["link"].status,
        )


def test_a_new_version_of_a_registered_event_type_is_registered_without_replace() -> None:
    from faber_runlog import Registry

    registry = Registry.isolated()
    registry.register_event_type("deploy", {"required": ["metadata"]})
    registry.register_event_type("deploy", {"properties": {"metadata": {"required": ["env"]}}}, version=2)
    with pytest.raises(InvalidEvent, match="register it as version 3"):
        registry.register_event_type("deploy", {"required": ["phase"]}, version=2)
