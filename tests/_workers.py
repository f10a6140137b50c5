"""Worker processes for concurrency and crash tests (run as a script).

Usage: python _workers.py COMMAND SPEC_JSON ...
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import RunStore


def _store(spec: dict[str, object], **kwargs: object) -> RunStore:
    return RunStore(str(spec["url"]), storage_options=spec.get("storage_options") or None, **kwargs)  # type: ignore[arg-type]


def append(spec: dict[str, object], run_id: str, count: int, tag: str) -> None:
    """Append ``count`` checkpoint events tagged with this worker's name.

    The test asserts each event once and no gap; how long an emit waits under contention is
    bench_contention's and test_contention's to measure, so a loaded 2-core CI machine gets a
    longer claim budget than the 30 s default.
    """
    run = _store(spec, claim_budget=180.0).get_run(run_id)
    for i in range(count):
        run.log.emit("checkpoint", metadata={"label": f"{tag}-{i}", "worker": tag, "i": i})
    print("done", flush=True)


def steps(spec: dict[str, object], run_id: str, count: int, tag: str) -> None:
    """Start and complete ``count`` steps (status-only appends: protocol rule 21) until done or refused."""
    from faber_runlog import InvalidTransition

    run = _store(spec, claim_budget=180.0).get_run(run_id)
    for i in range(count):
        try:
            run.log.emit("step_start", phase="work", step=f"{tag}-{i}")
        except InvalidTransition:
            print("refused", i, flush=True)
            return
        run.log.emit("step_complete", phase="work", step=f"{tag}-{i}")
    print("done", count, flush=True)


def append_forever(spec: dict[str, object], run_id: str, tag: str) -> None:
    """Append until killed; prints each id so the parent knows progress."""
    run = _store(spec).get_run(run_id)
    i = 0
    while True:
        ev = run.log.emit("checkpoint", metadata={"label": f"{tag}-{i}", "payload": "x" * 2000})
        print(ev.event_id, flush=True)
        i += 1


def idempotent(spec: dict[str, object], run_id: str, key: str) -> None:
    """Emit one event with an idempotency key; print the id it got."""
    run = _store(spec).get_run(run_id)
    ev = run.log.emit("checkpoint", metadata={"label": key}, idempotency_key=key)
    print(ev.event_id, flush=True)


def append_until_sealed(spec: dict[str, object], run_id: str, tag: str) -> None:
    """Append checkpoints until the log is sealed; prints each acknowledged id, then ``sealed``."""
    import time

    from faber_runlog import RunArchived

    run = _store(spec).get_run(run_id)
    i = 0
    while True:
        try:
            ev = run.log.emit("checkpoint", metadata={"label": f"{tag}-{i}"})
        except RunArchived:
            print("sealed", flush=True)
            return
        print(ev.event_id, flush=True)
        i += 1
        time.sleep(0.002)


def consolidate(spec: dict[str, object], run_id: str) -> None:
    """Consolidate a run (the parent may SIGKILL this at any point)."""
    from faber_runlog import consolidate as _consolidate

    record = _consolidate(_store(spec), run_id)
    print(record.last_seq, flush=True)


if __name__ == "__main__":
    command, spec_json, *rest = sys.argv[1:]
    spec = json.loads(spec_json)
    if command == "append":
        append(spec, rest[0], int(rest[1]), rest[2])
    elif command == "steps":
        steps(spec, rest[0], int(rest[1]), rest[2])
    elif command == "append_forever":
        append_forever(spec, rest[0], rest[1])
    elif command == "idempotent":
        idempotent(spec, rest[0], rest[1])
    elif command == "append_until_sealed":
        append_until_sealed(spec, rest[0], rest[1])
    elif command == "consolidate":
        consolidate(spec, rest[0])
    else:
        raise SystemExit(f"unknown command {command}")
