"""One surface: what the docs promise holds for the CLI (as a shell user runs it) and for Python."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from faber_runlog import Resumer, RunStore
from faber_runlog._lease import try_acquire_lease
from faber_runlog.errors import RunNotRerunnable

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
