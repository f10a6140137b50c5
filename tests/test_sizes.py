"""Protocol rule 21 (docs/concurrency.md): an event file's size says whether it may have moved the status.

Every backend writes the mark; a status-only append that lost a race claims on one sized listing and
reads none of the events it missed; an odd-sized one (a move, a seal, an unchecked or custom-folded type)
sends it to the careful round, which folds and refuses what the exact status refuses.
"""

from __future__ import annotations

import uuid

import pytest
from test_claim_loop import Recorded, Waits

from faber_runlog import InvalidTransition, Registry, RunState, RunStore
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import RunLayout, event_body, may_move_by_size
from faber_runlog._log.eventlog import EventLog
from faber_runlog._services.archive import consolidate

pytestmark = pytest.mark.rule("protocol", 21)


def _sizes(store: RunStore, run_id: str) -> dict[int, bool]:
    layout = RunLayout(RunId.parse(run_id))
    listed = store.storage.list_names(layout.events)
    odd: dict[int, bool] = {}
    for n, name in enumerate(listed, 1):
        size = store.storage.size(f"{layout.events}/{name}")
        assert size is not None
        odd[n] = may_move_by_size(size)
    return odd


def test_the_padding_sets_the_parity_and_leaves_the_json_alone() -> None:
    for body in (b'{"a":1}', b'{"a":12}'):
        for may_move in (True, False):
            padded = event_body(body, may_move=may_move)
            assert (may_move, body) == (may_move_by_size(len(padded)), padded.rstrip())


@pytest.mark.backends("memory", "local", "s3")
def test_event_files_are_odd_sized_exactly_when_they_may_move_the_status(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()  # 1: created -> running
    log = run.log
    log.emit("step_start", phase="build", step="a")  # 2: running stays running
    log.emit("step_complete", phase="build", step="a")  # 3: outside the transition table
    run.request_approval("gate", approval_id="g1")  # 4: running -> awaiting_approval
    run.decide("g1", "approve", client_token="t1")  # 5: a decision always counts
    log.emit("step_start", phase="build", step="b", unchecked=True)  # 6: unchecked: its state was not checked
    log.emit("step_complete", phase="build", step="b")  # 7
    run.complete()  # 8: running -> completed
    record = consolidate(store, run.id)  # 9: the seal
    assert 9 == record.last_seq + 1
    expected = {1: True, 2: False, 3: False, 4: True, 5: True, 6: True, 7: False, 8: True, 9: True}
    assert expected == _sizes(store, run.id)
    if store.storage.capabilities.list_after:  # the one LIST that rule 21 reads returns the same sizes
        layout = RunLayout(RunId.parse(run.id))
        listed = store.storage.sizes_after(layout.events, "")
        assert [store.storage.size(f"{layout.events}/{n}") for n, _ in listed] == [size for _, size in listed]


def test_a_type_with_a_registered_fold_is_marked_as_a_move() -> None:
    registry = Registry.isolated()
    registry.register_event_type("force_fail")

    def fail(state: RunState, _event: object) -> None:
        state.status = "failed"

    registry.register_fold("force_fail", fail)
    store = RunStore(f"memory://sizes-{uuid.uuid4().hex}", registry=registry)
    run = store.create_run("acme", "web")
    run.start()
    mine = store.get_run(run.id).log
    mine.emit("step_start", phase="build", step="a")  # this handle knows the run is running
    store.get_run(run.id).log.emit("force_fail")  # odd-sized: its fold may change anything
    with pytest.raises(InvalidTransition, match="'failed'"):
        mine.emit("step_start", phase="build", step="b")  # folds it, sees failed, refuses
    assert {1: True, 2: False, 3: True} == _sizes(store, run.id)


def test_a_status_only_append_that_lost_claims_on_one_sized_listing_and_reads_no_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    monkeypatch.setattr(random, "uniform", lambda _low, high: high)
    clock = Waits()
    store = RunStore(f"memory://sizes-{uuid.uuid4().hex}", clock=clock)
    run = store.create_run("acme", "web")
    run.start()  # event 1
    storage = Recorded.of(store, run.id, clock)
    clock.calls = storage.calls
    log = EventLog(storage, RunId.parse(run.id))
    # Tag 5 (protocol rule 22 takes it from the writer id): not the rivals' tag 0, so the order of rule 24 has
    # one writer before it after its own event. A random id drew tag 0 one run in sixteen, and no wait.
    log._writer = "0005" + uuid.uuid4().hex[:8]  # noqa: SLF001
    assert 2 == log.emit("step_start", phase="build", step="a").event_id
    storage.calls.clear()
    storage.rivals = [3]  # others append 3, 4 and 5 (even-sized: they moved no status)
    assert 6 == log.emit("step_start", phase="build", step="b").event_id
    assert ["create 3 lost", "wait 1", "list events after 2", "create 6 won"] == storage.calls
    storage.calls.clear()
    storage.rivals = [2]
    assert 9 == log.emit("step_start", phase="build", step="c").event_id  # still unread: it lists after 6
    # Contended, it waits for the one writer before it in the tags' order (rule 24: 1 x 2 trips + at most
    # half a trip) and learns the tail before it claims; the rivals land first anyway, and it lists again.
    expected = ["wait 2.5", "list events after 6", "create 7 lost", "wait 1", "list events after 6", "create 9 won"]
    assert expected == storage.calls
    # Its state never folded the others' events; a read folds them, and the log is whole.
    assert 9 == log.fold_state().last_event_id
    assert list(range(1, 10)) == [e.event_id for e in store.get_run(run.id).log.read()]


@pytest.mark.backends("memory", "local", "s3")
def test_a_status_only_append_behind_an_odd_sized_event_folds_and_is_refused(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    mine = store.get_run(run.id).log
    mine.emit("step_start", phase="build", step="mine")
    other = store.get_run(run.id)
    for i in range(3):
        other.log.emit("step_start", phase="build", step=f"other-{i}")  # even-sized
    other.cancel()  # odd-sized: running -> cancelled
    with pytest.raises(InvalidTransition, match="'cancelled'"):
        mine.emit("step_start", phase="build", step="too late")
    assert [1, 2, 3, 4, 5, 6] == [e.event_id for e in store.get_run(run.id).log.read()]
    assert "cancelled" == store.get_run(run.id).state().status


@pytest.mark.backends("memory", "local", "s3")
def test_two_handles_taking_turns_on_word_keep_the_log_gapless_and_the_fold_exact(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    a, b = store.get_run(run.id).log, store.get_run(run.id).log
    ids = []
    for i in range(6):
        for log, who in ((a, "a"), (b, "b")):
            ids.append(log.emit("step_start", phase="build", step=f"{who}{i}").event_id)
            ids.append(log.emit("step_complete", phase="build", step=f"{who}{i}").event_id)
    assert list(range(2, 26)) == ids
    fresh = store.get_run(run.id).state()
    assert fresh.to_dict() == a.fold_state().to_dict() == b.fold_state().to_dict()
    assert ("running", 12) == (fresh.status, len(fresh.phases["build"].steps))
