"""Cost follows new work at scale (issue 15): long runs and many runs.

Two workloads, both appended through the public API:

(a) bounded: a workflow of 30 steps in 5 phases, cycled, with a retry every
    7th step (step_error then step_retry: two status changes);
(b) growing: a new step per pair of events (the state grows with the run).

Rows: bytes written per append over the last 500 appends of a long run (next
to the event bytes themselves), a fresh process's ``state()`` on a long run
next to a short one (a) or next to reading its snapshot alone (b),
``list_runs`` over runs with large states next to runs with small ones, and
the S3 requests and bytes per run a listing costs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import Row, best_of

from faber_runlog import RunStore
from faber_runlog._log.eventlog import EventLog
from faber_runlog._storage.backends import Storage

PHASES = tuple(f"phase{p}" for p in range(5))
STEPS_PER_PHASE = 6  # 30 steps in 5 phases


def bounded_workload() -> Iterator[dict[str, Any]]:
    """Workload (a), for ever: 5 phases of 6 steps, cycled; every 7th step fails once and is retried."""
    n = 0
    while True:
        for phase in PHASES:
            yield {"type": "phase_start", "phase": phase}
            for s in range(STEPS_PER_PHASE):
                step = f"step{s}"
                n += 1
                yield {"type": "step_start", "phase": phase, "step": step, "metadata": {"attempt": 1}}
                if n % 7 == 0:
                    yield {"type": "step_error", "phase": phase, "step": step, "error": "exit 1"}
                    yield {"type": "step_retry", "phase": phase, "step": step}
                yield {"type": "step_complete", "phase": phase, "step": step, "metadata": {"note": "x" * 40}}
            yield {"type": "phase_complete", "phase": phase}


def growing_workload() -> Iterator[dict[str, Any]]:
    """Workload (b), for ever: every pair of events adds a new step to the state."""
    i = 0
    while True:
        yield {"type": "step_start", "phase": "build", "step": f"step-{i}", "metadata": {"attempt": 1}}
        yield {"type": "step_complete", "phase": "build", "step": f"step-{i}", "metadata": {"note": "x" * 40}}
        i += 1


WORKLOADS: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {"a": bounded_workload, "b": growing_workload}


class _Written:
    """Counts the bytes a storage writes (every create and replace), by wrapping the instance's methods."""

    def __init__(self, storage: Storage) -> None:
        self.bytes = 0
        self.events = 0
        create, replace = storage.create, storage.replace

        def counted_create(key: str, body: bytes, *args: Any, **kwargs: Any) -> Any:
            self.bytes += len(body)
            if "/events/" in key:
                self.events += len(body)
            return create(key, body, *args, **kwargs)

        def counted_replace(key: str, body: bytes, *args: Any, **kwargs: Any) -> Any:
            self.bytes += len(body)
            return replace(key, body, *args, **kwargs)

        storage.create = counted_create  # type: ignore[method-assign,assignment]
        storage.replace = counted_replace  # type: ignore[method-assign,assignment]

    def reset(self) -> None:
        self.bytes = self.events = 0


def _emit(log: EventLog, fields: dict[str, Any]) -> None:
    fields = dict(fields)
    log.emit(fields.pop("type"), **fields)


def fill(store: RunStore, workload: str, n: int, *, measure_last: int = 0) -> tuple[str, _Written | None]:
    """A run of ``n`` events of ``workload`` appended through the API; counts the writes of the last ones."""
    run = store.create_run("bench", f"scale-{workload}")
    run.start()
    events = WORKLOADS[workload]()
    written = None
    for i in range(n - 1):
        if measure_last and i == n - 1 - measure_last:
            written = _Written(store.storage)
        _emit(run.log, next(events))
    return run.id, written


def bench_bytes_per_append(tmp: Path, n: int) -> list[Row]:
    rows = []
    last = 500
    for workload in ("a", "b"):
        store = RunStore(str(tmp / f"bytes-{workload}"), fsync=False)
        _, written = fill(store, workload, n, measure_last=last)
        assert written is not None
        ours, peer = written.bytes / last, written.events / last
        rows.append(
            Row(
                f"bytes written per append, last {last} of {n:,} events, workload ({workload})",
                ours / 1024,
                "the event bytes alone",
                peer / 1024,
                "KB",
                "<= 2 KB",
                ours / peer,
                ours <= 2048,
            )
        )
    return rows


_FRESH = """
import sys, time
from faber_runlog import RunStore
from faber_runlog._format.layout import decode_snapshot
from faber_runlog._domain.state import RunState
store = RunStore(sys.argv[1], fsync=False)
best = best_snap = float("inf")
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    state = store.get_run(sys.argv[2]).state()
    best = min(best, time.perf_counter() - t)
    t = time.perf_counter()
    RunState.from_dict(decode_snapshot(store.storage.read(sys.argv[2] + "/state.json"))[0])
    best_snap = min(best_snap, time.perf_counter() - t)
print(best, best_snap, state.last_event_id)
"""


def _fresh_state(store: RunStore, run_id: str) -> tuple[float, float]:
    """(state() in a fresh process, reading + decoding its state.json alone), best of a few processes."""
    best = best_snap = float("inf")
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", _FRESH, store.url, run_id, "1"], capture_output=True, text=True, check=True
        )
        t, t_snap, _ = out.stdout.split()
        best, best_snap = min(best, float(t)), min(best_snap, float(t_snap))
    return best, best_snap


def bench_fresh_state(tmp: Path, n: int) -> list[Row]:
    rows = []
    for workload in ("a", "b"):
        big = RunStore(str(tmp / f"fresh-{workload}"), fsync=False)
        big_id, _ = fill(big, workload, n)
        t_big, t_snap = _fresh_state(big, big_id)
        if workload == "a":
            small = RunStore(str(tmp / f"fresh-small-{workload}"), fsync=False)
            small_id, _ = fill(small, workload, 1000)
            t_small, _ = _fresh_state(small, small_id)
            rows.append(
                Row(
                    f"fresh-process state(), {n:,} vs 1,000 events, workload (a)",
                    t_big * 1e3,
                    "same, 1,000 events",
                    t_small * 1e3,
                    "ms",
                    "<= 3x",
                    t_big / t_small,
                    t_big / t_small <= 3.0,
                )
            )
        else:
            size = len(big.storage.read(f"{big_id}/state.json") or b"") / 1e6
            rows.append(
                Row(
                    f"fresh-process state(), {n:,} events, workload (b) ({size:.1f} MB state)",
                    t_big * 1e3,
                    "read + decode its state.json alone",
                    t_snap * 1e3,
                    "ms",
                    "<= 3x (snapshot-bound)",
                    t_big / t_snap,
                    t_big / t_snap <= 3.0,
                )
            )
    return rows


def _many_runs(store: RunStore, runs: int, state_kb: int) -> None:
    """``runs`` completed runs whose ``state.json`` is about ``state_kb`` KB (0: a few hundred bytes).

    The state is made large with one event (a retry loop whose metadata the
    state keeps): building it from thousands of steps would cost minutes of
    setup on S3 and measure the same thing, since a listing must not depend
    on the state's size.
    """
    for _ in range(runs):
        run = store.create_run("bench", "listing")
        run.start()
        if state_kb:
            run.log.emit("retry_loop_enter", metadata={"loop": "big", "context": "x" * (state_kb * 1024)})
        run.log.snapshot()
        run.complete()


def bench_list_runs(tmp: Path, runs: int, state_kb: int) -> list[Row]:
    large = RunStore(str(tmp / "list-large"), fsync=False)
    small = RunStore(str(tmp / "list-small"), fsync=False)
    _many_runs(large, runs, state_kb)
    _many_runs(small, runs, 0)
    rid = large.list_runs()[0].run_id
    stored_kb = len(large.storage.read(f"{rid}/state.json") or b"") / 1024
    t_large = best_of(3, large.list_runs)
    t_small = best_of(3, small.list_runs)
    return [
        Row(
            f"list_runs, {runs} runs with {stored_kb:,.0f} KB states",
            t_large * 1e3,
            f"{runs} runs with small states",
            t_small * 1e3,
            "ms",
            "<= 1.5x",
            t_large / t_small,
            t_large / t_small <= 1.5,
        )
    ]


def bench_list_runs_s3(runs: int, state_kb: int) -> list[Row]:
    from bench_core import _counting_fs, _moto

    server, opts = _moto()
    try:
        fs = _counting_fs(opts)
        fs.makedirs("bench", exist_ok=True)  # the suites share one moto server
        store = RunStore(fs=fs, root=f"bench/runs-{uuid.uuid4().hex}")
        _many_runs(store, runs, state_kb)
        got: dict[str, int] = {}
        orig = store.storage.read_many

        def counted(keys: Any) -> dict[str, bytes | None]:
            out = orig(keys)
            for k, v in out.items():
                kind = k.rsplit("/", 1)[-1] if "/events/" not in k else "event probe"
                got[kind] = got.get(kind, 0) + (len(v) if v is not None else 0)
            return out

        store.storage.read_many = counted  # type: ignore[method-assign,assignment]
        fs.calls.clear()
        t = time.perf_counter()
        listed = store.list_runs()
        elapsed = time.perf_counter() - t
        assert len(listed) == runs, listed.problems
        gets = fs.calls.get("get_object", 0) + fs.calls.get("head_object", 0)
        lists = fs.calls.get("list_objects_v2", 0)
        total = sum(fs.calls.values())
    finally:
        server.stop()
    per_run_bytes = sum(got.values()) / runs
    detail = ", ".join(f"{k} {v / runs:,.0f} B" for k, v in sorted(got.items()))
    return [
        Row(
            f"S3 list_runs: GETs per run ({runs} runs, {state_kb} KB states)",
            gets / runs,
            "target 1 GET per run",
            1.0,
            "req",
            "<= 1 (we read summary + probe)",
            gets / runs,
            gets / runs <= 1.0,
        ),
        Row(
            f"  bytes read per run ({detail})",
            per_run_bytes / 1024,
            "target <= 2 KB",
            2.0,
            "KB",
            "<= 2 KB",
            per_run_bytes / 2048,
            per_run_bytes <= 2048,
        ),
        Row(
            f"  all requests per run ({lists} LISTs shared, {elapsed * 1e3:,.0f} ms)",
            total / runs,
            "GETs",
            gets / runs,
            "req",
            "",
            total / max(gets, 1),
            None,
        ),
    ]


def run(*, quick: bool) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="faber-bench-scale-"))
    try:
        n = 5_000 if quick else 50_000
        rows = bench_bytes_per_append(tmp, n)
        rows += bench_fresh_state(tmp, n)
        rows += bench_list_runs(tmp, 40 if quick else 200, 100 if quick else 420)
        rows += bench_list_runs_s3(20 if quick else 200, 100 if quick else 420)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from run import render

    print(render(run(quick="--quick" in sys.argv)))
