"""Protocol rule 24 (docs/concurrency.md): contended writers take turns in the order of their size tags.

The tags come from the listings a writer makes anyway (rule 22 puts them in every event file's size);
the order only sizes a contended writer's wait before its first try, which then learns the tail.
"""

from __future__ import annotations

import random
import uuid

import pytest
from test_claim_loop import Recorded, Waits

from faber_runlog import RunStore
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import SIZE_TAGS, event_body, tag_by_size
from faber_runlog._log.eventlog import EventLog

pytestmark = pytest.mark.rule("protocol", 24)

MINE = 5  # the tested writer's tag


class Tagged(Recorded):
    """The recording double, whose other writers' events carry the tags of ``rival_tags``, in turn."""

    rival_tags: list[int]

    def _rival_tag(self) -> int:
        return self.rival_tags.pop(0)


class Landing(Waits):
    """The recording clock, under which other writers land the events of ``landing`` while this one waits."""

    storage: Tagged
    landing: list[tuple[int, int]]  # (event number, tag)

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        for seq, tag in self.landing:
            self.storage.rival_tags.append(tag)
            self.storage._rival(seq)  # noqa: SLF001  (the double's own way to land another writer's event)
        self.landing = []


@pytest.fixture
def tagged(monkeypatch: pytest.MonkeyPatch) -> tuple[EventLog, Tagged]:
    """A writer of tag 5 that appended events 1 and 2 alone, and its recording storage."""
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)  # every random part: the top of its window
    clock = Landing()
    store = RunStore(f"memory://order-{uuid.uuid4().hex}", clock=clock)
    run = store.create_run("acme", "web")
    storage = Tagged.of(store, run.id, clock)
    assert isinstance(storage, Tagged)
    storage.rival_tags = []
    clock.calls, clock.storage, clock.landing = storage.calls, storage, []
    log = EventLog(storage, RunId.parse(run.id))
    log._writer = f"{MINE:04x}" + uuid.uuid4().hex[:8]  # noqa: SLF001  (the tag comes from the writer id)
    for i in range(2):
        log.emit("checkpoint", metadata={"label": f"own {i}"})
    storage.calls.clear()
    return log, storage


def _lose_to(log: EventLog, storage: Tagged, tags: list[int]) -> int:
    """Let writers of ``tags`` take the number this writer tries next; return the number it then got."""
    storage.rivals, storage.rival_tags = [len(tags)], list(tags)
    seq = log.emit("checkpoint", metadata={"label": "after a loss"}).event_id
    storage.calls.clear()
    return seq


def test_the_tag_is_read_back_from_the_size_for_every_tag_and_mark() -> None:
    for tag in range(SIZE_TAGS):
        for may_move in (True, False):
            assert tag == tag_by_size(len(event_body(b'{"a":1}', may_move=may_move, tag=tag)))


def test_a_writer_that_just_wrote_waits_for_every_other_writer_in_the_order_then_learns_the_tail(
    tagged: tuple[EventLog, Tagged],
) -> None:
    log, storage = tagged
    assert 6 == _lose_to(log, storage, [1, 3, 9])  # 3, 4, 5 by tags 1, 3, 9; then 6 is its own
    assert 7 == log.emit("checkpoint", metadata={"label": "next"}).event_id
    # The order is 1, 3, 5, 9; after its own 6 come 9, 1 and 3: three turns of 2 round trips, plus the
    # random half trip; then one sized listing (nothing went by) and the create.
    assert ["wait 6.5", "list events after 6", "create 7 won"] == storage.calls


def test_writers_that_all_share_its_tag_give_no_order_and_it_yields_at_random(tagged: tuple[EventLog, Tagged]) -> None:
    log, storage = tagged
    assert 6 == _lose_to(log, storage, [MINE, MINE, MINE])  # writers of its own tag: no order to take
    assert 7 == log.emit("checkpoint", metadata={"label": "next"}).event_id
    # Rule 20's random wait (the top of [0, 3 t)), not "no one before it": else the writer that just
    # wrote would go again at once, every time.
    assert ["wait 3", "list events after 6", "create 7 won"] == storage.calls


def test_writers_of_older_events_leave_the_order_and_a_lone_writer_never_waits(
    tagged: tuple[EventLog, Tagged],
) -> None:
    log, storage = tagged
    assert 6 == _lose_to(log, storage, [1, 3, 9])
    log._contended_until = float("-inf")  # noqa: SLF001  (as after rule 20's window: no one appended lately)
    for i in range(40):  # 40 events alone: tags 1, 3 and 9 drop out of the last 32
        log.emit("checkpoint", metadata={"label": f"alone {i}"})
    assert [f"create {n} won" for n in range(7, 47)] == storage.calls
    storage.calls.clear()
    assert 49 == _lose_to(log, storage, [2, 2])  # 47 and 48 by tag 2
    assert 50 == log.emit("checkpoint", metadata={"label": "next"}).event_id
    # The order is now 2 and 5: after its own 49 comes one writer.
    assert ["wait 2.5", "list events after 49", "create 50 won"] == storage.calls


def test_a_writer_whose_turn_went_by_unused_leaves_the_order_until_it_writes_again(
    tagged: tuple[EventLog, Tagged],
) -> None:
    log, storage = tagged
    clock = log._storage.clock  # noqa: SLF001  (the double's clock, which lands events while the writer waits)
    assert isinstance(clock, Landing)
    assert 6 == _lose_to(log, storage, [1, 3, 9])
    clock.landing = [(7, 1), (8, 3)]  # while it waits for 9, 1 and 3, writers 1 and 3 append; 9 does not
    assert 9 == log.emit("checkpoint", metadata={"label": "next"}).event_id
    assert ["wait 6.5", "list events after 6", "create 9 won"] == storage.calls
    storage.calls.clear()
    # 9 let its turn go by (it finished its work, say): after its own 9, it waits for 1 and 3 only.
    assert 10 == log.emit("checkpoint", metadata={"label": "then"}).event_id
    assert ["wait 4.5", "list events after 9", "create 10 won"] == storage.calls
    storage.calls.clear()
    # 1 and 3 did not write during that wait either: it yields at random (rule 20), the order being its own.
    clock.landing = [(11, 9)]  # 9 writes again, and is back in the order
    assert 12 == log.emit("checkpoint", metadata={"label": "again"}).event_id
    assert ["wait 3", "list events after 10", "create 12 won"] == storage.calls
    storage.calls.clear()
    assert 13 == log.emit("checkpoint", metadata={"label": "last"}).event_id
    assert ["wait 2.5", "list events after 12", "create 13 won"] == storage.calls


def test_the_wait_for_a_turn_is_capped_on_a_slow_store(tagged: tuple[EventLog, Tagged]) -> None:
    log, storage = tagged
    assert 6 == _lose_to(log, storage, [1, 3, 9])
    log._trip = 1.0  # noqa: SLF001  (as after slow claims: three turns would be 6.5 s)
    assert 7 == log.emit("checkpoint", metadata={"label": "next"}).event_id
    assert "wait 200" == storage.calls[0]  # 2 s, in the double's round trips of 10 ms
