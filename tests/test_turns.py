"""Protocol rule 23 (docs/concurrency.md): contended writers on a local folder take turns instead of racing.

A turn is an ``flock`` on the run's events folder, taken only by a writer that saw contention lately,
polled for a bounded time and never needed for safety: the exclusive create still decides each claim.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from faber_runlog import RunStore
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import RunLayout
from faber_runlog._log import eventlog
from faber_runlog._log.eventlog import EventLog
from faber_runlog._storage.backends import LocalStorage

pytestmark = pytest.mark.rule("protocol", 23)


def test_a_local_turn_is_held_by_one_holder_at_a_time_and_given_up_after_its_wait(tmp_path: Path) -> None:
    storage = RunStore(str(tmp_path / "runs")).storage
    assert isinstance(storage, LocalStorage)
    storage.makedirs("run/events")
    held, release, results = threading.Event(), threading.Event(), []

    def holder() -> None:
        with storage.turn("run/events", 1.0) as got:
            results.append(got)
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with storage.turn("run/events", 0.05) as got:
        results.append(got)  # the holder has it: given up after the wait
    release.set()
    thread.join()
    with storage.turn("run/events", 0.05) as got:
        results.append(got)
    with storage.turn("run/missing", 0.05) as got:
        results.append(got)  # no folder: nothing to hold, the create decides alone
    assert [True, False, True, False] == results


def test_backends_without_turns_hold_none() -> None:
    store = RunStore(f"memory://turns-{uuid.uuid4().hex}")
    with store.storage.turn("anything", 1.0) as got:
        assert got is False


def _contended(log: EventLog) -> None:
    log._contended_until = float("inf")  # noqa: SLF001  (as after a lost race: the writer takes turns)


def test_a_contended_writer_learns_the_tail_in_its_turn_and_claims_without_losing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()
    mine = EventLog(store.storage, RunId.parse(run.id))
    mine.emit("step_start", phase="build", step="a")
    for i in range(3):  # another writer moves the tail on: this handle's tail is stale
        run.log.emit("step_start", phase="build", step=f"other-{i}")
    run.log.emit("checkpoint", metadata={"label": "plain"})
    claims: list[str] = []
    claim = LocalStorage.claim

    def spy(self: LocalStorage, key: str, data: bytes) -> bool | None:
        won = claim(self, key, data)
        claims.append(f"{key.rsplit('/', 1)[-1][:20].lstrip('0')} {'won' if won else 'lost'}")
        return won

    monkeypatch.setattr(LocalStorage, "claim", spy)
    _contended(mine)
    assert 7 == mine.emit("step_start", phase="build", step="b").event_id  # on word: no fold needed
    assert 8 == mine.emit("checkpoint", metadata={"label": "mine"}).event_id  # plain
    assert ["7 won", "8 won"] == claims  # no create lost: the turn's round learned the tail first
    events = list(store.get_run(run.id).log.read())
    assert list(range(1, 9)) == [e.event_id for e in events]


def test_a_writer_does_not_wait_out_a_stalled_turn_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "_TURN_WAIT_MIN", 0.05)
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()
    mine = EventLog(store.storage, RunId.parse(run.id))
    mine.emit("step_start", phase="build", step="a")
    events_folder = RunLayout(RunId.parse(run.id)).events
    held, release = threading.Event(), threading.Event()
    still_held: list[bool] = []

    def stalled() -> None:
        with store.storage.turn(events_folder, 1.0):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=stalled)
    thread.start()
    held.wait(10)
    _contended(mine)
    try:
        assert 3 == mine.emit("step_start", phase="build", step="b").event_id
        still_held.append(not release.is_set())
    finally:
        release.set()
        thread.join()
    assert [True] == still_held  # acknowledged while the stalled holder still had the turn
