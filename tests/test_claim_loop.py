"""The claim loop one lost race at a time (docs/concurrency.md, protocol rules 13 to 15).

A storage double records every request a writer makes and lets "other writers" land events on the
numbers it tries; a manual clock records its waits (nothing sleeps). Each create costs one simulated
round trip, so the writer's measured claim round trip stays at ``ROUND_TRIP``, and the random wait is
pinned to the top of its window: the tests read the window the writer drew from.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable

import pytest

from faber_runlog import RunStore
from faber_runlog._base import codec as _codec
from faber_runlog._base.clock import ManualClock
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import RunLayout, event_body, parse_seq_name
from faber_runlog._log.eventlog import EventLog
from faber_runlog._storage.backends import Capabilities, MemoryStorage

ROUND_TRIP = 0.01  # seconds of the manual clock per create


class Recorded(MemoryStorage):
    """Memory storage that records each request and lets other writers take the numbers it is asked to create."""

    capabilities = Capabilities(
        conditional_create=True,
        compare_and_swap=True,
        conditional_delete=True,
        list_after=True,  # as on S3: the listing round is one LIST
        batched_reads=True,
        concurrent_puts=False,
    )
    contention_backoff = ROUND_TRIP  # the writer's round trip starts here and, one trip per create, stays

    manual: ManualClock
    layout: RunLayout
    run_id: str
    calls: list[str]
    rivals: list[int]  # before each event create: how many events other writers land first
    slow: list[float]  # the round trips of the next creates, in seconds (then ROUND_TRIP each)

    @classmethod
    def of(cls, store: RunStore, run_id: str, clock: ManualClock) -> Recorded:
        """The store's memory, seen through this double."""
        storage = cls(store.storage.fs, store.storage.root)
        storage.clock = storage.manual = clock
        storage.calls, storage.rivals, storage.slow = [], [], []
        storage.layout = RunLayout(RunId.parse(run_id))
        storage.run_id = run_id
        return storage

    def _name(self, key: str) -> str:
        name = key.rsplit("/", 1)[-1]
        seq = parse_seq_name(name)
        return str(seq) if seq is not None else name

    def _rival(self, seq: int) -> None:
        body = {
            "type": "checkpoint",
            "event_id": seq,
            "run_id": self.run_id,
            "timestamp": "2026-01-01T00:00:00.000000Z",
            "nonce": f"rival-{seq}",
            "metadata": {},
            "schema_version": 1,
        }
        data = event_body(_codec.dumps(body), may_move=False, tag=self._rival_tag())
        assert MemoryStorage.create(self, self.layout.event(seq), data)

    def _rival_tag(self) -> int:
        """The size tag of the next other writer's event (protocol rule 22): 0 here."""
        return 0

    def create(self, key: str, data: bytes) -> bool:
        seq = parse_seq_name(key.rsplit("/", 1)[1])
        if seq is not None and self.rivals:
            for n in range(seq, seq + self.rivals.pop(0)):
                self._rival(n)
        won = super().create(key, data)
        self.calls.append(f"create {self._name(key)} {'won' if won else 'lost'}")
        self.manual.advance(self.slow.pop(0) if self.slow else ROUND_TRIP)
        return won

    def read(self, key: str) -> bytes | None:
        self.calls.append(f"get {self._name(key)}")
        return super().read(key)

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        keys = list(keys)
        self.calls.append("get " + " ".join(self._name(k) for k in keys))
        return {k: MemoryStorage.read(self, k) for k in keys}

    def exists(self, key: str) -> bool:
        self.calls.append(f"exists {self._name(key)}")
        return super().exists(key)

    def list_after(self, folder: str, start_after: str, limit: int | None = None) -> list[str]:
        self.calls.append(f"list {folder.rsplit('/', 1)[-1]} after {self._name(start_after)}")
        return super().list_after(folder, start_after, limit)

    def sizes_after(self, folder: str, start_after: str) -> list[tuple[str, int]]:
        self.calls.append(f"list {folder.rsplit('/', 1)[-1]} after {self._name(start_after)}")  # one LIST, with sizes
        names = MemoryStorage.list_after(self, folder, start_after)
        return [(n, len(MemoryStorage.read(self, f"{folder}/{n}") or b"")) for n in names]


class Waits(ManualClock):
    """A manual clock that writes each wait into the storage's record, in round trips."""

    calls: list[str]

    def sleep(self, seconds: float) -> None:
        self.calls.append(f"wait {seconds / ROUND_TRIP:.4g}")
        super().sleep(seconds)


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> tuple[EventLog, Recorded]:
    """A writer that appended events 1 and 2 itself (it knows the tail), and its recording storage."""
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)  # every random wait: the top of its window
    clock = Waits()
    store = RunStore(f"memory://claims-{uuid.uuid4().hex}", clock=clock)
    run = store.create_run("acme", "web")
    storage = Recorded.of(store, run.id, clock)
    clock.calls = storage.calls
    log = EventLog(storage, RunId.parse(run.id))
    for i in range(2):
        log.emit("checkpoint", metadata={"label": f"own {i}"})
    storage.calls.clear()
    return log, storage


def _emit(log: EventLog, *, exact: bool) -> int:
    key = uuid.uuid4().hex if exact else None  # an idempotency key makes it an exact append
    return log.emit("checkpoint", metadata={"label": "mine"}, idempotency_key=key).event_id


@pytest.mark.rule("protocol", 13)
def test_a_writer_that_lost_a_number_waits_then_learns_the_tail_in_one_round_then_claims_at_once(
    writer: tuple[EventLog, Recorded],
) -> None:
    log, storage = writer
    storage.rivals = [1]  # another writer takes number 3
    assert 4 == _emit(log, exact=True)
    # Exact: the wait first, then the lost number and the next in one batch, no LIST; no events.jsonl
    # either, since this writer knew the whole log moments ago (test_contention covers the stale case).
    assert ["create 3 lost", "wait 1", "get 3 4", "create 4 won"] == storage.calls
    storage.calls.clear()
    storage.rivals = [1]
    assert 6 == _emit(log, exact=False)
    # Plain: no request before it guesses the next number; the create after a guess checks that the number
    # it guessed past is no seal (protocol rule 4), and no events.jsonl, since it knew the whole log moments
    # ago (protocol rule 13). (It lost a race lately, so it first yields, at random, since it knows no
    # other writer's tag to take turns with: protocol rules 20 and 24; and it learns the tail first.)
    assert ["wait 3", "list events after 4", "create 5 lost", "wait 1", "create 6 won", "get 5"] == storage.calls
    storage.calls.clear()
    storage.rivals = [1, 3]  # its guess loses too: then it lists
    assert 11 == _emit(log, exact=False)
    assert [
        "wait 3",  # it lost a race lately: it yields first (protocol rules 20 and 24)
        "list events after 6",  # and learns the tail: nothing went by yet
        "create 7 lost",
        "wait 1",
        "create 8 lost",
        "wait 0.6667",
        # One LIST, with sizes, from what it knows (its own 6): 7 to 10 went by, all even-sized, so
        # the tail is no seal and none of them moved the status; nothing is read (protocol rule 21).
        "list events after 6",
        "create 11 won",
    ] == storage.calls


@pytest.mark.rule("protocol", 14)
@pytest.mark.parametrize(("went_by", "window"), [(5, 2 * 5 / 3), (40, 2 * 32 / 3)])
def test_the_wait_after_a_loss_grows_with_the_numbers_that_went_by_up_to_32_round_trips(
    writer: tuple[EventLog, Recorded], went_by: int, window: float
) -> None:
    log, storage = writer
    storage.rivals = [went_by, 1]  # many numbers go by before its first try, then one more before its second
    assert 3 + went_by + 1 == _emit(log, exact=True)
    waits = [float(c.split()[1]) for c in storage.calls if c.startswith("wait")]
    # Round trips: before it learned anything, one number went by (its own); then ``went_by`` of them.
    assert [1, pytest.approx(window, rel=1e-3)] == waits


@pytest.mark.rule("protocol", 15)
def test_a_writer_that_keeps_losing_waits_less_after_each_loss(writer: tuple[EventLog, Recorded]) -> None:
    log, storage = writer
    storage.rivals = [1, 1, 1, 1]  # one number goes by before each of its first four tries
    assert 7 == _emit(log, exact=True)
    waits = [float(c.split()[1]) for c in storage.calls if c.startswith("wait")]
    assert [pytest.approx(2 / (1 + k), rel=1e-3) for k in (1, 2, 3, 4)] == waits


@pytest.mark.rule("protocol", 7)
def test_the_measured_round_trip_shrugs_off_one_stall_and_follows_a_store_that_slowed_down(
    writer: tuple[EventLog, Recorded],
) -> None:
    log, storage = writer
    storage.slow = [100 * ROUND_TRIP]  # one create stalls for a second
    _emit(log, exact=False)
    assert ROUND_TRIP * 1.75 == pytest.approx(log._trip)  # noqa: SLF001  (a stall counts as 4 trips, a quarter)
    log._trip = ROUND_TRIP  # noqa: SLF001
    # The store is 20 times slower for good (every writer of a busy run sends requests to it): waits sized by
    # the old trip would send the writers back before the last ones' requests are answered, so the estimate
    # catches up within a few claims (it took dozens when a claim could move it by an eighth).
    storage.slow = [20 * ROUND_TRIP] * 8
    for _ in range(8):
        _emit(log, exact=False)
    assert 15 * ROUND_TRIP < log._trip <= 20 * ROUND_TRIP  # noqa: SLF001


def test_a_fresh_handle_that_lists_the_whole_log_from_event_1_does_not_ask_for_events_jsonl() -> None:
    from faber_runlog._services.archive import consolidate

    clock = Waits()
    store = RunStore(f"memory://claims-{uuid.uuid4().hex}", clock=clock)
    run = store.create_run("acme", "web")
    run.start()
    for i in range(3):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    storage = Recorded.of(store, run.id, clock)
    clock.calls = storage.calls
    assert 4 == EventLog(storage, RunId.parse(run.id)).fold_state().last_event_id
    # One LIST from event 1 to the end, every file read: nothing was removed, so no events.jsonl.
    assert [] == [c for c in storage.calls if "events.jsonl" in c]
    # Cleanup removes event 1 first: a handle that misses it reads events.jsonl and the whole log.
    run.cancel()
    record = consolidate(store, run.id)
    storage.delete(RunLayout(RunId.parse(run.id)).event(1))
    storage.calls.clear()
    state = EventLog(storage, RunId.parse(run.id)).fold_state()
    assert (record.last_seq + 1, "cancelled") == (state.last_event_id, state.status)
    assert ["get events.jsonl"] == [c for c in storage.calls if "events.jsonl" in c]
