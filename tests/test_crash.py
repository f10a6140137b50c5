"""A writer killed with SIGKILL mid-append leaves a log that reads and continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from faber_runlog import RunStore
from faber_runlog._domain.state import RunState, fold_all
from faber_runlog._format.layout import parse_seq_name

WORKERS = Path(__file__).with_name("_workers.py")


def test_sigkilled_writer_leaves_a_readable_log_that_continues(shared_store_spec: dict[str, Any]) -> None:
    store = RunStore(shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None)
    run = store.create_run("acme", "web")
    proc = subprocess.Popen(
        [sys.executable, str(WORKERS), "append_forever", json.dumps(shared_store_spec), run.id, "victim"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(30):  # let it get well into its stride, then kill it mid-flight
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)  # waits, and closes its pipe (an unclosed pipe is a ResourceWarning)
    assert -signal.SIGKILL == proc.returncode

    reopened = store.get_run(run.id)
    events = list(reopened.log.read())
    assert len(events) >= 30
    assert list(range(1, len(events) + 1)) == [e.event_id for e in events]
    assert fold_all(RunState(run_id=run.id), events) == reopened.state()
    # No torn or stray file is visible as an event.
    names = store.storage.list_names(f"{run.id}/events")
    assert len(events) == sum(1 for n in names if parse_seq_name(n) is not None)

    nxt = reopened.log.emit("checkpoint", metadata={"label": "after-crash"})
    assert len(events) + 1 == nxt.event_id
