"""One damaged run never stops a frame over many runs: it is left out whole, logged and listed.

``events_frame``, ``steps_frame``, ``phases_frame``, ``runs_frame`` and ``to_arrow`` skip a run whose
files cannot be read, log a warning naming the run and the file, and list it in
``frame.attrs["problems"]`` (for Arrow tables, the schema metadata ``problems``), as ``list_runs``
does in ``.problems``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import RunStore
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import RunLayout

pytestmark = pytest.mark.backends("memory", "local")

FRAMES: dict[str, Callable[[RunStore], Any]] = {
    "events_frame": lambda s: s.events_frame(progress=False),
    "steps_frame": lambda s: s.steps_frame(progress=False),
    "phases_frame": lambda s: s.phases_frame(progress=False),
    "runs_frame": lambda s: s.runs_frame(progress=False),
}


def _runs(store: RunStore, n: int = 3, steps: int = 3) -> list[str]:
    ids = []
    for _ in range(n):
        run = store.create_run("acme", "web")
        run.start()
        for i in range(steps):
            run.log.emit("step_start", phase="build", step=f"s{i}")
            run.log.emit("step_complete", phase="build", step=f"s{i}")
        ids.append(str(run.id))
    return ids


def _damage(store: RunStore, run_id: str, seq: int) -> str:
    key = RunLayout(RunId.parse(run_id)).event(seq)
    store.storage.replace(key, b"{not json")
    return store.storage.path(key)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_a_frame_skips_a_run_with_a_damaged_event_file_and_names_it(
    store: RunStore, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    ids = _runs(store)
    path = _damage(store, ids[1], 2)
    if name == "runs_frame":
        # A listing reads summaries, never old events: only a run it must fold (its summary gone) meets the damage.
        store.storage.delete(RunLayout(RunId.parse(ids[1])).summary)
    with caplog.at_level(logging.WARNING, "faber_runlog"):
        frame = FRAMES[name](store)
    assert [ids[0], ids[2]] == sorted(set(frame["run_id"].tolist()), key=ids.index)
    assert [ids[1]] == [p.run_id for p in frame.attrs["problems"]]
    warned = [r.getMessage() for r in caplog.records if ids[1] in r.getMessage()]
    assert 1 <= len(warned)
    if name != "runs_frame":  # the runs frame reads summaries: its warning names the run, the fold the file
        assert Path(path).name in frame.attrs["problems"][0].error


def test_a_run_damaged_after_rows_were_read_is_left_out_whole(store_factory: Callable[..., RunStore]) -> None:
    store = store_factory(segment_every=4)
    ids = _runs(store, n=2, steps=3)  # 7 events: 1..4 in a segment, 5..7 files
    _damage(store, ids[0], 7)
    frame = store.events_frame(progress=False)
    assert [ids[1]] == frame["run_id"].unique().tolist()
    assert 7 == len(frame)
    steps = store.steps_frame(progress=False)
    assert [ids[1]] == steps["run_id"].unique().tolist()


def test_steps_frame_skips_a_run_whose_metadata_is_damaged(store: RunStore) -> None:
    ids = _runs(store, n=2)
    store.storage.replace(RunLayout(RunId.parse(ids[0])).metadata, b"[1, 2")
    frame = store.steps_frame(progress=False)
    assert [ids[1]] == frame["run_id"].unique().tolist()
    assert [ids[0]] == [p.run_id for p in frame.attrs["problems"]]


@pytest.mark.parametrize("kind", ["events", "runs"])
def test_to_arrow_skips_a_damaged_run_and_lists_it_in_the_schema_metadata(store: RunStore, kind: str) -> None:
    ids = _runs(store, n=2)
    _damage(store, ids[0], 2)
    if kind == "runs":  # a listing reads summaries: only a run it must fold meets the damaged event
        store.storage.delete(RunLayout(RunId.parse(ids[0])).summary)
    table = store.to_arrow(kind)
    assert {ids[1]} == set(table.column("run_id").to_pylist())
    problems = json.loads(table.schema.metadata[b"problems"])
    assert [ids[0]] == [p["run_id"] for p in problems]


def test_a_frame_without_damage_has_no_problems(store: RunStore) -> None:
    _runs(store, n=1)
    assert [] == store.events_frame(progress=False).attrs["problems"]
    assert store.to_arrow().schema.metadata is None or b"problems" not in store.to_arrow().schema.metadata


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_a_time_stored_before_times_were_parsed_is_nat_not_a_stopped_frame(store: RunStore, name: str) -> None:
    ids = _runs(store, n=2, steps=1)
    layout = RunLayout(RunId.parse(ids[0]))
    event = json.loads(store.storage.read(layout.event(3)) or b"")  # the last: the run's updated_at
    event["timestamp"] = "2026-02-30T10:00:00.123456789Z"  # what an older writer accepted
    store.storage.replace(layout.event(3), json.dumps(event).encode())
    for cache in (layout.state, layout.summary):
        store.storage.delete(cache)
    frame = FRAMES[name](store)
    assert set(ids) == set(frame["run_id"])
    assert [] == frame.attrs["problems"]
