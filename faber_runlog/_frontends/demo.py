"""A short, self-contained demo: log a run that fails, then read its state back."""

from __future__ import annotations

import datetime as _dt
import sys
from typing import Any, Final, TextIO

from faber_runlog._base import codec as _codec
from faber_runlog._services.store import RunStore

__all__ = ["run_demo"]

_STAGED: Final[tuple[tuple[int, dict[str, Any]], ...]] = (
    (0, {"type": "workflow_start", "metadata": {"workflow": "build-and-test"}}),
    (15, {"type": "phase_start", "phase": "build"}),
    (30, {"type": "step_start", "phase": "build", "step": "compile"}),
    (1230, {"type": "step_complete", "phase": "build", "step": "compile", "duration_ms": 1200}),
    (1240, {"type": "artifact_create", "phase": "build", "step": "compile", "metadata": {"path": "dist/app.whl"}}),
    (1260, {"type": "phase_complete", "phase": "build"}),
    (1275, {"type": "phase_start", "phase": "test"}),
    (1290, {"type": "step_start", "phase": "test", "step": "unit"}),
    (3120, {"type": "test_run", "phase": "test", "step": "unit", "metadata": {"passed": 41, "failed": 1}}),
    (3135, {"type": "step_error", "phase": "test", "step": "unit", "error": "1 test failed: test_login"}),
)
"""The demo's events and when each happens (ms after the start): a build, then a test step that fails."""


def run_demo(store: RunStore | None = None, out: TextIO = sys.stdout) -> str:
    """Log a small failing run in ``store`` (default: the embedded local folder); return its id."""
    store = store if store is not None else RunStore()
    run = store.create_run("demo", "hello", params={"work_id": "220"}, tags={"source": "demo"})
    out.write(f"store:   {store.url}\nrun id:  {run.id}\n")
    # The staged events carry the times a real run would have (from its creation on), not the microseconds
    # this function takes to write them: durations computed from timestamps (the build phase) then agree
    # with the ones a producer states (the compile step's 1,200 ms), in the state, the frames and the report.
    start = _dt.datetime.fromisoformat(run.metadata.created_at)
    for at_ms, fields in _STAGED:
        run.log.emit(**fields, timestamp=_codec.iso(start + _dt.timedelta(milliseconds=at_ms)))
    for event in store.get_run(run.id).log.read():
        where = "/".join(x for x in (event.phase, event.step) if x)
        out.write(f"  #{event.event_id:<3} {event.type:<16} {where}\n")
    state = store.get_run(run.id).state()
    out.write(f"status:  {state.status}\n")
    for phase in state.phases.values():
        steps = ", ".join(f"{s.name}={s.status}" for s in phase.steps.values())
        out.write(f"  phase {phase.name:<6} {phase.status:<10} {steps}\n")
    failed = state.failed_step
    if failed is not None:
        out.write(f"failed step: {failed.phase}/{failed.name}: {failed.error}\n")
    root = "" if store.url == RunStore().url else f" --root {_quote(store.url)}"
    out.write(
        "\nThis failure is staged: the demo logs a test step that fails on purpose, so there is something to look\n"
        "at and resume. Nothing is wrong with your setup. Next, try:\n"
        f"  faber-runlog{root} show {run.id}\n"
        f"  faber-runlog{root} resume {run.id} --dry-run\n"
        f"  faber-runlog{root} retry-step {run.id} test unit\n"
        f"  faber-runlog{root} report {run.id}\n"
    )
    return run.id


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
