"""Issue 21 parity: one state with the plan, registries that see their own types, types and backends declared once."""

from __future__ import annotations

import pytest

from faber_runlog import RunStore

pytestmark = pytest.mark.backends("memory")


def test_every_state_accessor_of_a_planned_run_includes_the_planned_phases() -> None:
    store = RunStore("memory://parity-plan")
    run = store.create_run("acme", "web", phases=["build", "test", "deploy"])
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    expected = ["build", "test", "deploy"]
    assert expected == list(run.state().phases)
    assert expected == list(run.log.current_state().phases)
    assert expected == list(run.log.load_state().phases)
    assert expected == list(run.log.snapshot().phases)
    assert expected == list(store.get_run(run.id).log.current_state().phases)
    assert "pending" == run.log.current_state().phases["deploy"].status


def test_a_run_resumed_after_an_error_and_completed_lists_no_error() -> None:
    import pandas

    from faber_runlog import Resumer

    store = RunStore("memory://parity-error")
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    run.log.emit("workflow_error", error="exit 2")
    failed = store.runs_frame().iloc[0]
    run = Resumer(store).resume(run.id)
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.log.emit("phase_complete", phase="build")
    run.log.emit("workflow_complete")
    done = store.runs_frame().iloc[0]
    assert ("failed", "exit 2") == (failed.status, failed.error)
    assert ("completed", True, True) == (done.status, pandas.isna(done.error), pandas.isna(done.failed_step))
    assert ["exit 2", "exit 2"] == [e.message for e in run.state().errors]
