"""A writer SIGKILLed at random points, many times in a row, never leaves a broken run.

Each round starts a fresh writer process on the same run, lets it emit a
random number of events (phases, steps, errors, snapshots), then kills it with
SIGKILL at whatever it was doing. After every kill the run must open, its
state must equal the fold of its events from scratch, no torn or stray file
may show up as an event, ``verify`` must pass, and the next writer continues
the sequence. ``--soak`` runs 200 local and 50 S3 rounds instead of the small default.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _faultreport import record

from faber_runlog import RunStore
from faber_runlog._domain.state import RunState, fold_all
from faber_runlog._format.layout import parse_seq_name
from faber_runlog._services.verify import reconstruct_state, verify_run

WORKERS = Path(__file__).with_name("_fault_workers.py")
FAST_ROUNDS = {"local": 8, "s3": 3}
# Every round re-reads, verifies and rebuilds the whole (growing) run, so S3 rounds cost more and more.
SOAK_ROUNDS = {"local": 200, "s3": 50}


def _open(spec: dict[str, Any]) -> RunStore:
    return RunStore(spec["url"], storage_options=spec["storage_options"] or None)


def _check_after_kill(spec: dict[str, Any], run_id: str, at_least: int) -> int:
    store = _open(spec)  # a fresh process's view: nothing cached from the writer
    run = store.get_run(run_id)
    events = list(run.log.read())
    n = len(events)
    assert n >= at_least
    assert list(range(1, n + 1)) == [e.event_id for e in events]
    assert fold_all(RunState(run_id=run_id), events) == run.state()
    names = store.storage.list_names(f"{run_id}/events")
    assert n == sum(1 for name in names if parse_seq_name(name) is not None)
    assert () == verify_run(store, run_id).problems
    rebuilt, report = reconstruct_state(store, run_id)
    assert report.ok, report.to_dict()
    assert n == rebuilt.last_event_id
    return n


@pytest.mark.slow
@pytest.mark.timeout(3600)  # --soak: 200 rounds on S3 take minutes
def test_writer_killed_at_random_points_again_and_again(shared_store_spec: dict[str, Any], soak: bool) -> None:
    kind = "local" if "://" not in shared_store_spec["url"] else "s3"
    rounds = SOAK_ROUNDS[kind] if soak else FAST_ROUNDS[kind]
    rng = random.Random(f"crash-loop-{kind}")
    store = _open(shared_store_spec)
    run = store.create_run("acme", "web")
    known = 0
    for _ in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, str(WORKERS), "crash_writer", json.dumps(shared_store_spec), run.id, "victim"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        seen = 0
        for _ in range(rng.randint(1, 12)):
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            seen = int(line)
            assert seen > known  # the new writer continued the sequence
        time.sleep(rng.random() * 0.02)  # land the kill anywhere in the next append
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert -signal.SIGKILL == proc.returncode
        known = _check_after_kill(shared_store_spec, run.id, seen)
    after = _open(shared_store_spec).get_run(run.id).log.emit("checkpoint", metadata={"label": "survivor"})
    assert known + 1 == after.event_id
    record(
        f"test_crash_loop: writer SIGKILLed at random points ({kind})",
        "SIGKILL",
        rounds,
        "after each kill: run opens, state == fold of its events, verify and reconstruct clean, "
        "no stray file read as an event, next writer continues the sequence",
        events=known + 1,
    )
