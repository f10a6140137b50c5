"""Several real processes appending to one run: no duplicate, no gap."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import RunStore
from faber_runlog._domain.state import RunState, fold_all

WORKERS = Path(__file__).with_name("_workers.py")


def _open(spec: dict[str, Any]) -> RunStore:
    return RunStore(spec["url"], storage_options=spec["storage_options"] or None)


def _spawn(spec: dict[str, Any], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKERS), args[0], json.dumps(spec), *args[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.rule("protocol", 1)
@pytest.mark.rule("protocol", 17)
def test_processes_appending_at_once_leave_every_event_once_and_gapless(
    shared_store_spec: dict[str, Any], soak: bool
) -> None:
    # --soak: 8 processes x 500 appends (the figures in docs/reliability.md); by default 4 x 30 (contended writers
    # take turns, so each event costs about two round trips of a busy moto: this is the suite's long pole).
    procs, per = (8, 500) if soak else (4, 30)
    store = _open(shared_store_spec)
    run = store.create_run("acme", "web")
    workers = [_spawn(shared_store_spec, "append", run.id, str(per), f"w{i}") for i in range(procs)]
    for w in workers:
        _out, err = w.communicate(timeout=600)
        assert 0 == w.returncode, err
    events = list(store.get_run(run.id).log.read())
    assert list(range(1, procs * per + 1)) == [e.event_id for e in events]
    per_worker = Counter(e.metadata["worker"] for e in events)
    assert {f"w{i}": per for i in range(procs)} == dict(per_worker)
    labels = [e.metadata["label"] for e in events]
    assert len(labels) == len(set(labels))
    # Each worker's own events appear in the order it emitted them.
    for i in range(procs):
        mine = [e.metadata["i"] for e in events if e.metadata["worker"] == f"w{i}"]
        assert list(range(per)) == mine
    state = store.get_run(run.id).state()
    assert fold_all(RunState(run_id=run.id), events) == state


@pytest.mark.timeout(600)
@pytest.mark.rule("protocol", 21)
def test_processes_starting_steps_on_word_never_start_one_after_a_cancel(shared_store_spec: dict[str, Any]) -> None:
    # Status-only appends claim after events they have not read (their sizes say nothing moved the
    # status): with a cancel landing among them, no step_start may follow it, and the log stays whole.
    procs, per = 4, 8
    store = _open(shared_store_spec)
    run = store.create_run("acme", "web")
    run.start()
    workers = [_spawn(shared_store_spec, "steps", run.id, str(per), f"w{i}") for i in range(procs)]
    log = store.get_run(run.id).log
    while log.last_event_id() < 1 + procs * per // 2 and any(w.poll() is None for w in workers):
        time.sleep(0.01)
    cancelled = store.get_run(run.id).cancel()
    outs = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert 0 == w.returncode, err
        outs.append(out.split()[0])
    assert set(outs) <= {"done", "refused"}, outs  # each finished its steps or was refused after the cancel
    events = list(store.get_run(run.id).log.read())
    assert list(range(1, len(events) + 1)) == [e.event_id for e in events]
    cancel_at = next(e.event_id for e in events if e.type == "workflow_cancelled")
    assert cancelled.event_id == cancel_at
    assert [] == [e.event_id for e in events if e.type == "step_start" and e.event_id > cancel_at]
    starts = [e.step for e in events if e.type == "step_start"]
    assert len(starts) == len(set(starts))
    state = store.get_run(run.id).state()
    assert ("cancelled", fold_all(RunState(run_id=run.id), events)) == (state.status, state)


@pytest.mark.slow
def test_same_idempotency_key_from_many_processes_gives_one_event(
    shared_store_spec: dict[str, Any], soak: bool
) -> None:
    procs = 8 if soak else 4
    store = _open(shared_store_spec)
    run = store.create_run("acme", "web")
    workers = [_spawn(shared_store_spec, "idempotent", run.id, "deploy-42") for _ in range(procs)]
    ids = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert 0 == w.returncode, err
        ids.append(int(out.strip()))
    assert [1] * procs == ids
    assert [("checkpoint", "deploy-42")] == [(e.type, e.idempotency_key) for e in run.log.read()]
