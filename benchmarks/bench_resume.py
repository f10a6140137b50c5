"""Resume planning cost: O(events since the snapshot), not O(history).

Two runs with a current ``state.json`` are planned side by side, one with 1k
events and one with 100k (20k in quick mode); the ratio of their planning
rates should stay near 1. An informational row plans the big run again with
its snapshot removed, to show what the snapshot saves.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import Row, best_of, rate_row

from faber_runlog import Event, Resumer, RunStore
from faber_runlog._base.codec import dumps
from faber_runlog._domain.state import RunState, fold_all
from faber_runlog._format.layout import RunLayout, encode_snapshot, fingerprint

PHASES = ("plan", "build", "test", "release")
STEPS = tuple(f"s{i}" for i in range(5))


def _events(run_id: str, n: int) -> list[dict[str, Any]]:
    """Steps starting and completing over four phases, ending in a failed step."""
    out: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        etype = "step_error" if i == n else ("step_start" if i % 2 else "step_complete")
        ev: dict[str, Any] = {
            "event_id": i,
            "type": etype,
            "timestamp": "2026-11-23T10:00:00.000000Z",
            "run_id": run_id,
            "phase": PHASES[(i // 10) % len(PHASES)],
            "step": STEPS[(i // 2) % len(STEPS)],
            "metadata": {"i": i},
            "schema_version": 1,
            "nonce": f"bench-{i}",
        }
        if etype == "step_error":
            ev["error"] = "exit 2"
        out.append(ev)
    return out


def _build(store: RunStore, n: int) -> str:
    """A run of ``n`` events written straight through Storage, plus a current state.json."""
    run = store.create_run("bench", "resume")
    layout = RunLayout(run.run_id)
    events = _events(run.id, n)
    for ev in events:
        store.storage.create(layout.event(ev["event_id"]), dumps(ev))
    state = fold_all(RunState(run_id=run.id), (Event.from_dict(e) for e in events))
    last = events[-1] if events else None
    fp = None if last is None else fingerprint(last["type"], last["timestamp"], last.get("nonce"))
    store.storage.replace(layout.state, encode_snapshot(state.to_dict(), fp))
    return run.id


def run(*, quick: bool) -> list[Row]:
    small_n, big_n = 1_000, (20_000 if quick else 100_000)
    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    try:
        store = RunStore(str(tmp / "runs"), fsync=False)
        small, big = _build(store, small_n), _build(store, big_n)
        resumer = Resumer(store)
        assert resumer.plan(big).resume_step is not None
        repeats = 5 if quick else 20
        t_small = best_of(repeats, lambda: resumer.plan(small))
        t_big = best_of(repeats, lambda: resumer.plan(big))
        state_key = RunLayout(store.get_run(big).run_id).state
        body = store.storage.read(state_key)
        assert body is not None
        store.storage.delete(state_key)
        t_full = best_of(1, lambda: resumer.plan(big))
        store.storage.replace(state_key, body)
        k = big_n // 1000
        return [
            rate_row(
                f"resume plan, {k}k-event run, current snapshot",
                1,
                t_big,
                f"same, {small_n // 1000}k-event run",
                t_small,
                "plans/s",
                0.5,
            ),
            rate_row(
                f"resume plan, {k}k-event run, no snapshot (full fold)",
                1,
                t_full,
                "same run with current snapshot",
                t_big,
                "plans/s",
                None,
            ),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
