"""Worker processes for the resume and re-run races (run as a script).

Usage: python _resume_workers.py COMMAND SPEC_JSON GO_FILE RUN_ID [ARG]
Each worker opens the store, then waits for GO_FILE to exist, so that all of
them act at the same moment; it prints one line of JSON with what it got.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import Resumer, RunStore


def _wait(go_file: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
        time.sleep(0.005)


if __name__ == "__main__":
    command, spec_json, go_file, run_id, *rest = sys.argv[1:]
    spec = json.loads(spec_json)
    store = RunStore(spec["url"], storage_options=spec.get("storage_options") or None)
    resumer = Resumer(store)
    run = store.get_run(run_id)
    run.state()  # warm up: the race is about the append, not about opening the run
    _wait(go_file)
    if command == "resume":
        event = resumer.resume_with_plan(run_id)[2]
        print(json.dumps({"event_id": event.event_id, "type": event.type}), flush=True)
    elif command == "rerun":
        child = resumer.rerun(run_id, params={"worker": rest[0]})
        print(json.dumps({"child": child.id}), flush=True)
    elif command == "emit_key":
        event = run.log.emit("step_complete", phase="build", step="compile", idempotency_key=rest[0])
        print(json.dumps({"event_id": event.event_id, "type": event.type}), flush=True)
    else:
        raise SystemExit(f"unknown command {command}")
