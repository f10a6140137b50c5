"""Worker processes for the lifecycle tests (run as a script).

Usage: python _lifecycle_workers.py COMMAND SPEC_JSON ...
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import ActiveRunExists, RunStore


def _store(spec: dict[str, object], **kwargs: object) -> RunStore:
    return RunStore(str(spec["url"]), storage_options=spec.get("storage_options") or None, **kwargs)  # type: ignore[arg-type]


def _wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def hold(spec: dict[str, object], key: str, ttl: float) -> None:
    """Create an exclusive run, heartbeat it, get into a phase and a gate, then wait to be killed."""
    run = _store(spec, lease_ttl=ttl).create_run("acme", "web", concurrency_key=key)
    run.start_heartbeat(interval=ttl / 4)
    run.start()
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.request_approval("review", phase="build", approval_id="review-1")
    print(run.id, flush=True)
    while True:
        time.sleep(1)


def start(spec: dict[str, object], key: str, go: str) -> None:
    """Race to create a run with the concurrency key; print who won."""
    store = _store(spec)
    _wait_for(go)
    try:
        run = store.create_run("acme", "web", concurrency_key=key)
    except ActiveRunExists as e:
        print(json.dumps({"won": False, "holder": e.run_id}), flush=True)
    else:
        print(json.dumps({"won": True, "run_id": run.id}), flush=True)


def sweep(spec: dict[str, object], go: str) -> None:
    """Sweep stale runs once the go file exists; print what was swept."""
    store = _store(spec)
    _wait_for(go)
    print(json.dumps([s.run_id for s in store.sweep_stale()]), flush=True)


if __name__ == "__main__":
    command, spec_json, *rest = sys.argv[1:]
    spec = json.loads(spec_json)
    if command == "hold":
        hold(spec, rest[0], float(rest[1]))
    elif command == "start":
        start(spec, rest[0], rest[1])
    elif command == "sweep":
        sweep(spec, rest[0])
    else:
        raise SystemExit(f"unknown command {command}")
