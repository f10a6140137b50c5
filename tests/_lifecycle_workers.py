"""Worker processes for the lifecycle tests (run as a script).

Usage: python _lifecycle_workers.py COMMAND SPEC_JSON ...
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import ActiveRunExists, Heartbeat, RunStore


def _store(spec: dict[str, object], **kwargs: object) -> RunStore:
    return RunStore(str(spec["url"]), storage_options=spec.get("storage_options") or None, **kwargs)  # type: ignore[arg-type]


_GIVE_UP: float = 600.0
"""Seconds a worker waits for a file before it gives up (a peer that died must not leave it running forever)."""


def _wait_for(path: str) -> None:
    _wait_files([path], pause=0.005)


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


def _wait_files(paths: list[str], pause: float = 0.002) -> None:
    deadline = time.monotonic() + _GIVE_UP
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {[p for p in paths if not os.path.exists(p)]}")
        time.sleep(pause)


def race_holder(spec: dict[str, object], folder: str, rounds: int, starters: int, ttl: float) -> None:
    """Each round: hold a run with a fresh key, its heartbeat always a little late; print the run id."""
    store = _store(spec, lease_ttl=ttl)
    for r in range(rounds):
        run = store.create_run("acme", "web", concurrency_key=f"race-{r}")
        run.start()
        hb = Heartbeat(store.storage, run.run_id, ttl=ttl, interval=ttl / 2)
        stop = threading.Event()

        def late(hb: Heartbeat = hb, stop: threading.Event = stop) -> None:
            # Late on purpose: the lease lapses briefly before every beat, so the
            # beat races the starters' sweeps and takeovers.
            while not stop.wait(ttl * 1.15) and hb.beat():
                pass

        beater = threading.Thread(target=late, daemon=True)
        beater.start()
        print(json.dumps({"round": r, "holder": run.id}), flush=True)
        open(os.path.join(folder, f"ready-{r}"), "w").close()
        _wait_files([os.path.join(folder, f"done-{r}-{i}") for i in range(starters)])
        stop.set()
        beater.join()


def race_starter(spec: dict[str, object], folder: str, rounds: int, index: int, ttl: float) -> None:
    """Each round: once the holder is ready, wait into its lease's lapse and race to take the key."""
    import random

    store = _store(spec)
    for r in range(rounds):
        _wait_files([os.path.join(folder, f"ready-{r}")])
        time.sleep(ttl * random.uniform(0.95, 1.3))
        try:
            run = store.create_run("acme", "web", concurrency_key=f"race-{r}")
        except ActiveRunExists:
            print(json.dumps({"round": r, "won": None}), flush=True)
        else:
            print(json.dumps({"round": r, "won": run.id}), flush=True)
        finally:  # the holder waits for every starter's file: an error must not leave it waiting
            open(os.path.join(folder, f"done-{r}-{index}"), "w").close()


def stale_writer(spec: dict[str, object], go: str) -> None:
    """Hold a run's lease with a short ttl and no heartbeat; after go, try to emit; print what happened."""
    from faber_runlog import LeaseLost

    store = _store(spec, lease_ttl=0.3)
    run = store.create_run("acme", "web", concurrency_key="stale")
    run.start()
    print(run.id, flush=True)
    _wait_for(go)
    try:
        run.log.emit("checkpoint", metadata={"label": "from the stale writer"})
    except LeaseLost as e:
        print(json.dumps({"refused": True, "epoch": e.epoch}), flush=True)
    else:
        print(json.dumps({"refused": False}), flush=True)


if __name__ == "__main__":
    command, spec_json, *rest = sys.argv[1:]
    spec = json.loads(spec_json)
    if command == "hold":
        hold(spec, rest[0], float(rest[1]))
    elif command == "start":
        start(spec, rest[0], rest[1])
    elif command == "sweep":
        sweep(spec, rest[0])
    elif command == "race_holder":
        race_holder(spec, rest[0], int(rest[1]), int(rest[2]), float(rest[3]))
    elif command == "race_starter":
        race_starter(spec, rest[0], int(rest[1]), int(rest[2]), float(rest[3]))
    elif command == "stale_writer":
        stale_writer(spec, rest[0])
    else:
        raise SystemExit(f"unknown command {command}")
