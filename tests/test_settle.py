"""Protocol rule 22 (docs/concurrency.md): a lost create is settled from what the loser learns anyway.

On S3 a create that meets a taken name cannot tell whether the bytes there are another writer's or
its own (a PUT that landed, its reply lost, retried and refused). Each writer's event files carry a
size tag, so the listing a lost round makes anyway tells another writer's bytes apart without a read;
a create whose own bytes took the number is acknowledged there, once.
"""

from __future__ import annotations

import random
import uuid

import pytest
from test_claim_loop import Recorded, Waits

from faber_runlog import InvalidArgument, RunStore
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import SIZE_TAGS, event_body, may_move_by_size
from faber_runlog._log.eventlog import EventLog
from faber_runlog._storage.backends import MemoryStorage

pytestmark = pytest.mark.rule("protocol", 22)


class Unsettled(Recorded):
    """As on S3: a lost create reports the name taken, not whose bytes took it.

    With ``echo``, the next event create lands and then reports the name taken: its reply was
    lost and the retry met its own write.
    """

    echo = False

    def claim(self, key: str, data: bytes) -> bool | None:
        if self.echo and "/events/" in key:
            self.echo = False
            assert MemoryStorage.create(self, key, data)
            self.calls.append(f"create {self._name(key)} taken")
            self.manual.advance(0.01)
            return None
        return True if self.create(key, data) else None


def _writer(store: RunStore, run_id: str, clock: Waits, tag: int) -> tuple[EventLog, Unsettled]:
    storage = Unsettled.of(store, run_id, clock)
    assert isinstance(storage, Unsettled)
    clock.calls = storage.calls
    log = EventLog(storage, RunId.parse(run_id))
    log._writer = f"{tag:04x}" + uuid.uuid4().hex[:8]  # noqa: SLF001  (the tag comes from the writer id)
    return log, storage


@pytest.fixture
def unsettled(monkeypatch: pytest.MonkeyPatch) -> tuple[RunStore, str, Waits]:
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)
    clock = Waits()
    store = RunStore(f"memory://settle-{uuid.uuid4().hex}", clock=clock)
    run = store.create_run("acme", "web")
    run.start()  # event 1
    return store, run.id, clock


def test_the_padding_puts_the_tag_and_the_mark_in_the_length_and_leaves_the_json_alone() -> None:
    for body in (b'{"a":1}', b'{"a":12}', b'{"a":"' + b"x" * 40 + b'"}'):
        for tag in range(SIZE_TAGS):
            for may_move in (True, False):
                padded = event_body(body, may_move=may_move, tag=tag)
                assert (2 * tag + may_move, body) == (len(padded) % (2 * SIZE_TAGS), padded.rstrip())
                assert may_move == may_move_by_size(len(padded))
                assert len(padded) - len(body) < 2 * SIZE_TAGS
    with pytest.raises(InvalidArgument, match=r"in 0\.\.15, got 16"):
        event_body(b"{}", may_move=False, tag=SIZE_TAGS)


@pytest.mark.parametrize(("etype", "step"), [("step_start", "b"), ("step_complete", "a")])
def test_a_lost_create_among_other_tags_is_settled_by_the_listing_without_a_read(
    unsettled: tuple[RunStore, str, Waits], etype: str, step: str
) -> None:
    store, run_id, clock = unsettled
    log, storage = _writer(store, run_id, clock, tag=5)  # the rivals' files carry tag 0
    assert 2 == log.emit("step_start", phase="build", step="a").event_id
    storage.calls.clear()
    storage.rivals = [3]  # others append 3, 4 and 5
    assert 6 == log.emit(etype, phase="build", step=step).event_id
    assert ["create 3 lost", "wait 1", "list events after 2", "create 6 won"] == storage.calls
    assert list(range(1, 7)) == [e.event_id for e in store.get_run(run_id).log.read()]


def test_a_lost_create_among_its_own_tag_reads_the_number_once_to_settle(
    unsettled: tuple[RunStore, str, Waits],
) -> None:
    store, run_id, clock = unsettled
    log, storage = _writer(store, run_id, clock, tag=0)  # the rivals' tag: sizes may agree
    assert 2 == log.emit("step_start", phase="build", step="a").event_id
    storage.calls.clear()
    storage.rivals = [1]
    assert 4 == log.emit("step_start", phase="build", step="b").event_id
    listed = storage.calls.index("list events after 2")
    assert ["create 3 lost", "wait 1", "list events after 2"] == storage.calls[: listed + 1]
    assert storage.calls[listed + 1 :] in (["create 4 won"], ["get 3", "create 4 won"])


@pytest.mark.parametrize(
    ("etype", "fields"),
    [
        ("step_start", {"phase": "build", "step": "b"}),  # on word (rule 21)
        ("step_complete", {"phase": "build", "step": "a"}),  # plain
        ("step_start", {"phase": "build", "step": "c", "idempotency_key": "k1"}),  # exact, folds
    ],
)
def test_a_create_that_met_its_own_bytes_is_acknowledged_at_that_number_once(
    unsettled: tuple[RunStore, str, Waits], etype: str, fields: dict[str, str]
) -> None:
    store, run_id, clock = unsettled
    log, storage = _writer(store, run_id, clock, tag=3)
    assert 2 == log.emit("step_start", phase="build", step="a").event_id
    storage.calls.clear()
    storage.echo = True
    event = log.emit(etype, **fields)  # type: ignore[arg-type]
    assert 3 == event.event_id
    assert "get 3" in storage.calls  # the listing shows our size: one read tells the bytes are ours
    assert not any(c.startswith("create 4") for c in storage.calls)  # no second copy of it
    events = list(store.get_run(run_id).log.read())
    assert [1, 2, 3] == [e.event_id for e in events]
    assert (etype, event.nonce) == (events[-1].type, events[-1].nonce)
    assert 4 == log.emit("step_start", phase="build", step="d").event_id  # the writer goes on after it
    assert 4 == log.fold_state().last_event_id
