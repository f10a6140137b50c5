"""The store's clock dates what it writes and times what it waits for (faber_runlog._base.clock)."""

from __future__ import annotations

import datetime as dt
import uuid

from faber_runlog import Archiver, ManualClock, RetentionPolicy, RunStore

START = dt.datetime(2031, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)


def _store(clock: ManualClock) -> RunStore:
    return RunStore(f"memory://clock-{uuid.uuid4().hex}", clock=clock)


def test_events_and_metadata_are_dated_by_the_store_clock() -> None:
    clock = ManualClock(START)
    store = _store(clock)
    run = store.create_run("acme", "web")
    clock.advance(90)
    run.start()
    assert "2031-01-02T03:04:05.600000Z" == run.metadata.created_at
    assert ["2031-01-02T03:05:35.600000Z"] == [e.timestamp for e in run.log.read()]


def test_a_tail_with_a_timeout_waits_on_the_store_clock_not_the_wall() -> None:
    clock = ManualClock(START)
    run = _store(clock).create_run("acme", "web")
    run.start()
    # A manual clock's sleep advances it: a ten-minute timeout ends at once, after one read.
    assert [1] == [e.event_id for e in run.log.tail(timeout=600, poll_interval=60)]
    assert 600 <= clock.monotonic() <= 660


def test_retention_counts_days_on_the_store_clock() -> None:
    clock = ManualClock(START)
    store, archive = _store(clock), _store(clock)
    run = store.create_run("acme", "web")
    run.start()
    run.complete()
    archiver = Archiver(store, archive)
    assert ["archived"] == [r.outcome for r in archiver.archive_finished()]
    assert [] == list(archiver.cleanup(RetentionPolicy(keep_days=30)).removed)
    clock.advance(31 * 86400)
    assert [run.id] == list(archiver.cleanup(RetentionPolicy(keep_days=30)).removed)
