"""Worker processes for the fault and crash-loop tests (run as a script).

Usage: python _fault_workers.py COMMAND SPEC_JSON ARGS...
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import RunStore


def _store(spec: dict[str, object]) -> RunStore:
    return RunStore(str(spec["url"]), storage_options=spec.get("storage_options") or None)  # type: ignore[arg-type]


def append(spec: dict[str, object], run_id: str, count: int, tag: str) -> None:
    """Emit ``count`` checkpoints with plain ``emit`` (no idempotency key, no retry of our own).

    Exactly-once here rests on the storage layer alone: retries inside
    ``Storage`` and the nonce read-back when a PUT's reply was lost.
    """
    run = _store(spec).get_run(run_id)
    for i in range(count):
        run.log.emit("checkpoint", metadata={"label": f"{tag}-{i}", "worker": tag, "i": i})
    print("done", flush=True)


def crash_writer(spec: dict[str, object], run_id: str, tag: str) -> None:
    """Emit a varied stream (phases, steps, errors, snapshots) until killed; print each id."""
    run = _store(spec).get_run(run_id)
    log = run.log
    i = 0
    while True:
        phase = f"p{i % 3}"
        step = f"s{i % 5}"
        kind = i % 7
        if kind == 0:
            ev = log.emit("phase_start", phase=phase)
        elif kind == 1:
            ev = log.emit("step_start", phase=phase, step=step)
        elif kind == 2:
            ev = log.emit("step_complete", phase=phase, step=step, duration_ms=1.5)
        elif kind == 3:
            ev = log.emit("step_error", phase=phase, step=step, error={"message": f"boom {i}"})
        elif kind == 4:
            ev = log.emit("step_retry", phase=phase, step=step)
        elif kind == 5:
            ev = log.emit("checkpoint", metadata={"label": f"{tag}-{i}", "payload": "x" * (i % 4000)})
        else:
            log.snapshot()
            ev = log.emit("artifact_create", phase=phase, step=step, metadata={"path": f"out/{i}.txt"})
        print(ev.event_id, flush=True)
        i += 1


if __name__ == "__main__":
    command, spec_json, *rest = sys.argv[1:]
    spec = json.loads(spec_json)
    if command == "append":
        append(spec, rest[0], int(rest[1]), rest[2])
    elif command == "crash_writer":
        crash_writer(spec, rest[0], rest[1])
    else:
        raise SystemExit(f"unknown command {command}")
