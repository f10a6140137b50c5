"""Advice keyed by error: every advised error, raised through the Python API, in Python, CLI and MCP words."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from faber_runlog import Resumer, Run, RunStore, export_faber
from faber_runlog._base.advice import ADVICE, advice, render
from faber_runlog._frontends.cli import main
from faber_runlog._frontends.faber_mcp import _message as faber_tool_error
from faber_runlog._frontends.mcp_server import in_tool_terms
from faber_runlog.errors import FaberRunlogError

MISSING = "acme/web/00000000-0000-4000-8000-000000000000"
PYTHON_WORDS = ("Resumer(", "run.", "store.", "=True", "faber_runlog.", "()")


def _running(store: RunStore) -> Run:
    run = store.create_run("acme", "web")
    run.start()
    return run


def _failing(store: RunStore) -> Run:
    run = _running(store)
    run.log.emit("step_start", phase="build", step="link")
    run.log.emit("step_error", phase="build", step="link", error="exit 2")
    return run


def _waiting(store: RunStore) -> Run:
    run = _running(store)
    run.request_approval("deploy")
    return run


def _paused(store: RunStore) -> Run:
    run = _running(store)
    run.pause()
    return run


def _ended(store: RunStore, how: str) -> Run:
    run = _running(store)
    {"complete": run.complete, "cancel": run.cancel, "fail": lambda: run.fail("exit 2")}[how]()
    return run


def _missing_event(store: RunStore) -> None:
    run = _running(store)
    run.log.emit("checkpoint", metadata={"label": "x"})
    store.storage.delete(f"{run.id}/events/{2:020d}.json")
    store.get_run(run.id).log.get(2)


def _twice(store: RunStore) -> None:
    store.create_run("acme", "web", run_id=MISSING)
    store.create_run("acme", "web", run_id=MISSING)


def _open_work(store: RunStore) -> None:
    run = _running(store)
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="link")
    run.complete()


def _exported_twice(store: RunStore, tmp_path: Path) -> None:
    run = _ended(store, "complete")
    export_faber(store, run.id, str(tmp_path / "faber"))
    export_faber(store, run.id, str(tmp_path / "faber"))


def _one_key_twice(store: RunStore) -> None:
    store.create_run("acme", "web", concurrency_key="deploy")
    store.create_run("acme", "web", concurrency_key="deploy")


# code -> how to make an error that carries it, through the Python API alone
SCENARIOS: dict[str, Callable[[RunStore, Path], object]] = {
    "start": lambda s, _: s.create_run("acme", "web").log.emit("workflow_complete"),
    "failing": lambda s, _: _failing(s).log.emit("workflow_complete"),
    "decide": lambda s, _: _waiting(s).log.emit("workflow_complete"),
    "unpause": lambda s, _: _paused(s).log.emit("workflow_complete"),
    "resume": lambda s, _: _failing(s).unpause(),
    "rerun": lambda s, _: _ended(s, "complete").log.emit("workflow_start"),
    "resume_or_rerun": lambda s, _: _ended(s, "fail").log.emit("workflow_start"),
    "allow_cancelled": lambda s, _: Resumer(s).resume(_ended(s, "cancel").id),
    "open_run": lambda s, _: _twice(s),
    "list_runs": lambda s, _: s.get_run(MISSING),
    "declare_type": lambda s, _: _running(s).log.emit("deploy"),
    "sweep": lambda s, _: _one_key_twice(s),
    "verify": lambda s, _: _missing_event(s),
    "finish_open_work": lambda s, _: _open_work(s),
    "overwrite": _exported_twice,
}


def test_every_code_of_the_table_has_a_scenario_here() -> None:
    assert set(ADVICE) == set(SCENARIOS)


@pytest.mark.parametrize("code", sorted(SCENARIOS))
def test_each_advised_error_renders_in_each_surface(code: str, tmp_path: Path) -> None:
    store = RunStore(f"memory://advice-{tmp_path.name}")
    with pytest.raises(FaberRunlogError) as raised:
        SCENARIOS[code](store, tmp_path)
    e = raised.value
    assert code in e.advice, (code, str(e))
    python, cli, mcp = (render(e, "python"), render(e, "cli"), render(e, "mcp"))
    assert str(e).endswith(python) and advice(e, "python") == " ".join(str(e).split())
    shown_cli, shown_mcp = advice(e, "cli"), advice(e, "mcp")
    assert shown_cli.endswith(cli) and shown_mcp.endswith(mcp)
    assert in_tool_terms(e) == shown_mcp == faber_tool_error(e)  # our tools and FABER's, alike
    # The same situation, worded for each surface: no Python call on the command line or in MCP.
    assert shown_cli[: -len(cli)] == shown_mcp[: -len(mcp)] == advice(e, "python")[: -len(python)]
    for words in (cli, mcp):
        assert [] == [w for w in PYTHON_WORDS if w in words], (code, words)
    assert "faber-runlog" not in python
    assert "RUN_ID" not in cli  # the run's own id where the error names one
    again = pickle.loads(pickle.dumps(e))
    assert (again.advice, str(again)) == (e.advice, str(e))


def test_the_command_line_prints_the_cli_wording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = RunStore(str(tmp_path / "runs"))
    run = _ended(store, "complete")
    err = io.StringIO()
    assert 1 == main(["--root", store.url, "emit", run.id, "workflow_start"], out=io.StringIO(), err=err)
    line = err.getvalue()
    assert line.endswith(f"; re-run it (`faber-runlog rerun {run.id}`)\n") and 1 == len(line.splitlines())
