from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from faber_runlog import CorruptEvent, EventLog, InvalidEvent, InvalidEventPosition, RunStore
from faber_runlog._domain.state import RunState, fold_all
from faber_runlog._format.layout import SNAPSHOTS_KEPT, seq_name


def test_emit_fills_automatic_fields(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    ev = run.log.emit("workflow_start", metadata={"workflow": "default"})
    assert (1, "workflow_start", run.id, 1) == (ev.event_id, ev.type, ev.run_id, ev.schema_version)
    assert ev.timestamp.endswith("Z")
    assert ev.nonce
    assert [ev] == list(store.get_run(run.id).log.read())


def test_event_ids_are_gapless_from_one(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    ids = [run.log.emit("checkpoint", metadata={"label": str(i)}).event_id for i in range(25)]
    assert list(range(1, 26)) == ids
    assert list(range(1, 26)) == [e.event_id for e in store.get_run(run.id).log.read()]


def test_read_since_until_types_and_limit(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    for i in range(5):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    run.log.emit("workflow_complete")
    log = store.get_run(run.id).log
    assert [4, 5, 6, 7] == [e.event_id for e in log.read(since=3)]
    assert [2, 3] == [e.event_id for e in log.read(since=1, until=3)]
    assert [1, 7] == [e.event_id for e in log.read(types=["workflow_start", "workflow_complete"])]
    assert [2, 3] == [e.event_id for e in log.read(types={"checkpoint"}, limit=2)]
    assert [] == list(log.read(since=7))
    assert 7 == log.last_event_id()


def test_invalid_event_writes_nothing(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    with pytest.raises(InvalidEvent, match=run.id):
        run.log.emit("step_start", phase="build")  # step missing
    with pytest.raises(InvalidEvent, match="register_event_type"):
        run.log.emit("no_such_type")
    with pytest.raises(InvalidEvent):
        run.log.emit("checkpoint", metadata={"label": "x", "bad": float("nan")})
    assert 1 == store.get_run(run.id).state().last_event_id
    assert [1] == [e.event_id for e in run.log.read()]


def test_state_is_the_same_from_a_fresh_handle(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="p")
    run.log.emit("step_start", phase="p", step="s")
    run.log.emit("step_complete", phase="p", step="s")
    assert run.state() == store.get_run(run.id).state()


def test_two_handles_interleave_without_gaps(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    a = store.get_run(run.id).log
    b = store.get_run(run.id).log
    got = []
    for i in range(10):
        got.append((a if i % 2 else b).emit("checkpoint", metadata={"label": str(i)}).event_id)
    assert list(range(1, 11)) == got
    assert list(range(1, 11)) == [e.event_id for e in run.log.read()]
    assert 10 == a.current_state().event_counts["checkpoint"]


def test_threads_appending_to_one_run(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    logs = [store.get_run(run.id).log for _ in range(4)]

    def work(i: int) -> None:
        for j in range(10):
            logs[i].emit("checkpoint", metadata={"label": f"{i}-{j}"})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = [e.metadata["label"] for e in run.log.read()]
    assert list(range(1, 41)) == [e.event_id for e in run.log.read()]
    assert 40 == len(set(labels))


def test_snapshot_is_written_every_k_events_and_on_status_change(store_factory: Callable[..., RunStore]) -> None:
    store = store_factory(snapshot_every=5)
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")  # status change: the summary follows event 1, no full snapshot
    summary = store.storage.read(f"{run.id}/summary.json")
    assert summary is not None and b'"last_event_id":1' in summary
    snap = store.storage.read(f"{run.id}/state.json")
    assert snap is not None and b'"last_event_id"' not in snap  # still the empty state of create_run
    for i in range(4):
        run.log.emit("checkpoint", metadata={"label": str(i)})  # 5th event: periodic snapshot
    snap = store.storage.read(f"{run.id}/state.json")
    assert snap is not None and b'"last_event_id":5' in snap
    assert store.storage.exists(f"{run.id}/snapshots/{seq_name(5)}")
    summary = store.storage.read(f"{run.id}/summary.json")
    # Where a write is a request (S3), periodic snapshots leave it alone; where writes are cheap it follows
    # every append, so listings of active runs fold nothing.
    expected = b'"last_event_id":5' if store.storage.capabilities.cheap_writes else b'"last_event_id":1'
    assert summary is not None and expected in summary


def test_reading_state_folds_only_events_after_the_snapshot(store_factory: Callable[..., RunStore]) -> None:
    store = store_factory(snapshot_every=10)
    run = store.create_run("acme", "web")
    for i in range(12):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    # Damage an event the snapshot already covers: a reader must not touch it.
    store.storage.replace(f"{run.id}/events/{seq_name(3)}", b"garbage")
    state = store.get_run(run.id).state()
    assert 12 == state.last_event_id
    assert 12 == len(state.checkpoints)


def test_state_at_time_travels(store_factory: Callable[..., RunStore]) -> None:
    store = store_factory(snapshot_every=4)
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="p")
    for i in range(8):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    run.log.emit("workflow_complete")
    fresh = store.get_run(run.id)
    assert ("running", 2) == (fresh.state(at=2).status, fresh.state(at=2).last_event_id)
    assert 5 == len(fresh.state(at=7).checkpoints)
    assert "completed" == fresh.state(at=11).status
    assert "created" == fresh.state(at=0).status
    # Asking beyond the end is the caller's mistake, not damage to the log.
    with pytest.raises(InvalidEventPosition, match=r"has events 1\.\.11; cannot show its state at event 12"):
        fresh.state(at=12)


def test_corrupt_snapshot_falls_back_to_folding_events(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("workflow_complete")
    store.storage.replace(f"{run.id}/state.json", b"\x00not json")
    assert "completed" == store.get_run(run.id).state().status


@pytest.mark.parametrize(
    "damage",
    [b'{"event_id": 2, "type": "checkpoint", "times', b"", b"[1, 2]", b'{"event_id": 9, "type": "x"}', b"\xff\xfe"],
)
def test_corrupt_event_file_is_reported_with_path_and_sequence(store: RunStore, damage: bytes) -> None:
    run = store.create_run(
        "acme",
        "web",
    )
    run.log.emit("workflow_start")
    run.log.emit("checkpoint", metadata={"label": "x"})
    key = f"{run.id}/events/{seq_name(2)}"
    if damage:
        store.storage.replace(key, damage)
    else:  # a truncated-to-zero file (only possible by hand)
        store.storage.delete(key)
        store.storage.fs.pipe_file(store.storage.path(key), b"")
    with pytest.raises(CorruptEvent) as info:
        list(store.get_run(run.id).log.read())
    assert (2, run.id) == (info.value.seq, info.value.run_id)
    assert info.value.path.endswith(seq_name(2))
    assert seq_name(2) in str(info.value)


def test_the_events_before_an_unreadable_one_are_read_before_the_error(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    for i in range(5):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    store.storage.replace(f"{run.id}/events/{seq_name(4)}", b"{not json")
    seen: list[int] = []

    def read_all() -> None:
        for event in store.get_run(run.id).log.read():
            seen.append(event.event_id)

    with pytest.raises(CorruptEvent) as info:
        read_all()
    assert [1, 2, 3] == seen
    assert 4 == info.value.seq


def test_tail_yields_new_events_and_stops_when_idle(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    seen: list[Any] = []

    def writer() -> None:
        for i in range(3):
            run.log.emit("checkpoint", metadata={"label": str(i)})

    t = threading.Thread(target=writer)
    t.start()
    for ev in store.get_run(run.id).log.tail(since=0, poll_interval=0.01, timeout=1.0):
        seen.append(ev.event_id)
        if len(seen) == 4:
            break
    t.join()
    assert [1, 2, 3, 4] == seen


def test_idempotency_key_appends_once(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    first = run.log.emit("checkpoint", metadata={"label": "a"}, idempotency_key="k1")
    again = store.get_run(run.id).log.emit("checkpoint", metadata={"label": "a"}, idempotency_key="k1")
    assert first == again
    assert [1] == [e.event_id for e in run.log.read()]


def test_emit_fills_the_logs_default_user_and_source(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    log = EventLog(store.storage, run.run_id, source="ci-bot", user="alice")
    fields: dict[str, Any] = {"type": "checkpoint", "metadata": {"label": "a"}}
    event = log.emit(**fields)
    assert ("alice", "ci-bot") == (event.user, event.source)
    assert {"type": "checkpoint", "metadata": {"label": "a"}} == fields  # the caller's dict is untouched
    explicit = log.emit("checkpoint", user="bob", metadata={"label": "b"})
    assert ("bob", "ci-bot") == (explicit.user, explicit.source)


def test_older_snapshots_are_kept_four_k_apart_and_state_at_still_folds_from_them(
    store_factory: Callable[..., RunStore],
) -> None:
    store = store_factory(snapshot_every=5)
    run = store.create_run("acme", "web")
    run.start()
    for i in range(60):  # a bounded state: state.json is rewritten every K events
        run.log.emit("checkpoint", metadata={"label": f"c{i % 3}"})
    layout_state = store.storage.read(f"{run.id}/state.json")
    assert layout_state is not None and b'"last_event_id":60' in layout_state
    taken = sorted(int(n[:20]) for n in store.storage.list_names(f"{run.id}/snapshots"))
    assert SNAPSHOTS_KEPT == len(taken)
    assert all(later - earlier >= 4 * 5 for earlier, later in itertools.pairwise(taken))
    events = list(run.log.read())
    fresh = store.get_run(run.id)
    for at in range(0, 62, 7):
        assert fold_all(RunState(run_id=run.id), events[:at]) == fresh.state(at=at)


def test_a_writer_lists_snapshots_only_when_an_older_one_may_be_due(monkeypatch: pytest.MonkeyPatch) -> None:
    from faber_runlog._storage.backends import MemoryStorage

    store = RunStore(f"memory://older-{uuid.uuid4().hex}", snapshot_every=5)
    run = store.create_run("acme", "web")
    run.start()
    listed: list[str] = []
    list_names = MemoryStorage.list_names

    def spy(self: MemoryStorage, key: str) -> list[str]:
        listed.append(key)
        return list_names(self, key)

    monkeypatch.setattr(MemoryStorage, "list_names", spy)
    for i in range(80):  # periodic snapshots at 5, 10, ..., 80: sixteen of them
        run.log.emit("checkpoint", metadata={"label": f"c{i % 3}"})
    # An older snapshot is kept at most every 4 K events, so the writer lists snapshots/ only when one
    # may be due (at 5, then once per 4 K: 25, 45, 65), not at each of the sixteen periodic snapshots.
    assert [f"{run.id}/snapshots"] * 4 == [k for k in listed if k.endswith("/snapshots")]
    taken = sorted(int(n[:20]) for n in store.storage.list_names(f"{run.id}/snapshots"))
    assert (SNAPSHOTS_KEPT, True) == (len(taken), all(b - a >= 20 for a, b in itertools.pairwise(taken)))


def test_a_stale_writer_that_claims_a_snapshot_boundary_folds_from_the_last_snapshot_not_from_its_own_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from faber_runlog._storage.backends import MemoryStorage

    store = RunStore(f"memory://stale-{uuid.uuid4().hex}", snapshot_every=10)
    run = store.create_run("acme", "web")
    run.start()
    stale = EventLog(store.storage, run.run_id, snapshot_every=10)
    stale.emit("checkpoint", metadata={"label": "early"})  # its state ends at event 2
    for i in range(57):  # another writer appends up to event 59, with snapshots at 10, 20, ... 50
        run.log.emit("checkpoint", metadata={"label": f"c{i % 3}"})
    events_read: list[str] = []
    read = MemoryStorage.read

    def spy(self: MemoryStorage, key: str) -> bytes | None:
        if "/events/" in key:
            events_read.append(key)
        return read(self, key)

    monkeypatch.setattr(MemoryStorage, "read", spy)
    assert 60 == stale.emit("checkpoint", metadata={"label": "late"}).event_id  # a snapshot is due at 60
    # Its own state is 57 events behind; the snapshot at 50 is 10 behind: it starts there (one read to
    # check that snapshot against event 50, then 51..59), not at event 3.
    assert len(events_read) <= 12
    state_json = store.storage.read(f"{run.id}/state.json")
    assert state_json is not None and b'"last_event_id":60' in state_json
    assert fold_all(RunState(run_id=run.id), list(run.log.read())) == stale.fold_state()


def test_snapshots_of_a_growing_state_are_spaced_by_its_size_and_still_serve_state_at(
    store_factory: Callable[..., RunStore],
) -> None:
    store = store_factory(snapshot_every=5)
    run = store.create_run("acme", "web")
    run.start()
    for i in range(150):  # a new step per pair of events: the state grows with the run
        run.log.emit("step_start" if i % 2 == 0 else "step_complete", phase="build", step=f"s{i // 2}")
    run.log.emit("step_start", phase="build", step="last")
    folder = f"{run.id}/snapshots"
    taken = [int(n[:20]) for n in store.storage.list_names(folder)]
    assert SNAPSHOTS_KEPT == len(taken)
    assert all(seq % 5 == 0 for seq in taken)
    # Snapshots wait until the events since the last one weigh as much as it does: far fewer than one per K.
    assert taken[-1] - taken[-2] > 5
    events = list(run.log.read())
    fresh = store.get_run(run.id)
    for at in (taken[0], taken[-1] - 1, taken[-1], 152):
        assert fold_all(RunState(run_id=run.id), events[:at]) == fresh.state(at=at)
