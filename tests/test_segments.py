"""Segments: K events in one object, written by the claimer of a boundary, used by readers only when intact.

And bounded reads on S3: ``read(limit=)``, ``read(until=)``, ``state(at=)`` and
``get(n)`` list and fetch only what they return (requests counted against moto).
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, S3Server

from faber_runlog import Event, RunStore, consolidate
from faber_runlog._base.ids import RunId
from faber_runlog._domain.state import RunState, apply
from faber_runlog._format.layout import RunLayout, decode_segment, parse_segment_name
from faber_runlog._log.eventlog import EventLog

WORKERS = Path(__file__).with_name("_segment_workers.py")
K = 5


def _fill(store: RunStore, n: int) -> str:
    run = store.create_run("acme", "seg")
    for i in range(n):
        run.log.emit("checkpoint", metadata={"label": f"c{i}"})
    return run.id


def _segments(store: RunStore, run_id: str) -> list[tuple[int, int]]:
    layout = RunLayout(RunId.parse(run_id))
    return [s for n in store.storage.list_names(layout.segments) if (s := parse_segment_name(n)) is not None]


def _from_files(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    """Every event straight from its file: the truth the segments must agree with."""
    layout = RunLayout(RunId.parse(run_id))
    out = []
    seq = 1
    while (body := store.storage.read(layout.event(seq))) is not None:
        out.append(json.loads(body))
        seq += 1
    return out


def _read(store: RunStore, run_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [e.to_dict() for e in EventLog(store.storage, RunId.parse(run_id), segment_every=K).read(**kwargs)]


def test_the_writer_of_each_boundary_writes_a_segment_and_reads_match_the_files(store_factory: Any) -> None:
    store = store_factory(segment_every=K)
    rid = _fill(store, 4 * K + 2)
    assert [(1, 5), (6, 10), (11, 15), (16, 20)] == sorted(_segments(store, rid))
    truth = _from_files(store, rid)
    assert truth == _read(store, rid)
    assert truth[7:13] == _read(store, rid, since=7, until=13)
    assert truth[3:9] == _read(store, rid, since=3, limit=6)
    assert truth == [e.to_dict() for e in store.get_run(rid).log.read()]


def test_a_reader_that_finds_a_segment_and_the_files_of_the_same_range_sees_each_event_once(
    store_factory: Any,
) -> None:
    store = store_factory(segment_every=K)
    rid = _fill(store, 2 * K + 1)
    got = _read(store, rid)
    assert list(range(1, 2 * K + 2)) == [e["event_id"] for e in got]
    assert _from_files(store, rid) == got
    # and a state folded through segments is the state folded from the files
    folded = RunState(run_id=rid)
    for d in _from_files(store, rid):
        apply(folded, Event.from_dict(d))
    assert folded.to_dict() == store.get_run(rid).state().to_dict()


@pytest.mark.parametrize("damage", ["flipped", "cut", "foreign", "renamed"])
@pytest.mark.rule("protocol", 12)
def test_a_damaged_segment_is_ignored_with_a_warning_and_the_files_are_read(
    store_factory: Any, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory(segment_every=K)
    rid = _fill(store, 2 * K)
    layout = RunLayout(RunId.parse(rid))
    key = layout.segment(1, K)
    body = store.storage.read(key)
    assert body is not None
    if damage == "flipped":
        store.storage.replace(key, body.replace(b'"c1"', b'"cX"'))
    elif damage == "cut":
        store.storage.replace(key, body[: len(body) - 20])
    elif damage == "foreign":
        store.storage.replace(key, body.replace(rid.encode(), b"acme/seg/00000000-0000-4000-8000-000000000000"))
    else:  # a segment stored under the name of another range
        store.storage.replace(layout.segment(K + 1, 2 * K), body)
    with caplog.at_level(logging.WARNING, logger="faber_runlog._log.eventlog"):
        got = _read(store, rid)
    assert _from_files(store, rid) == got
    assert "ignoring segment" in caplog.text


def _rewrite_segment(store: RunStore, rid: str, lines: list[bytes], fmt: int) -> None:
    """Store segment 1..K with these event lines in segment format ``fmt`` (1: sha256, 2: CRC-32)."""
    body = b"\n".join(lines) + b"\n"
    checksum = hashlib.sha256(body).hexdigest()[:32] if fmt == 1 else f"crc32:{zlib.crc32(body):08x}"
    head = {"segment": fmt, "run_id": rid, "first": 1, "last": K, "count": K, "checksum": checksum}
    store.storage.replace(RunLayout(RunId.parse(rid)).segment(1, K), json.dumps(head).encode() + b"\n" + body)


def _segment_lines(store: RunStore, rid: str) -> list[bytes]:
    body = store.storage.read(RunLayout(RunId.parse(rid)).segment(1, K))
    assert body is not None
    return decode_segment(body, rid, 1, K).splitlines()


def _swapped(lines: list[bytes]) -> list[bytes]:
    return [lines[0], lines[2], lines[1], *lines[3:]]  # intact bytes and a valid checksum, but line 2 is event 3


@pytest.mark.parametrize(
    ("fmt", "edit", "ignored"),
    [(1, list, False), (2, _swapped, True)],
    ids=["first-format-still-read", "lines-out-of-order-ignored"],
)
def test_a_rewritten_segment_is_read_when_it_holds_and_ignored_by_readers_and_the_fold_when_not(
    store_factory: Any, caplog: pytest.LogCaptureFixture, fmt: int, edit: Any, ignored: bool
) -> None:
    store = store_factory(segment_every=K)
    rid = _fill(store, 2 * K)
    truth = _from_files(store, rid)
    expected_state = store.get_run(rid).state().to_dict()
    _rewrite_segment(store, rid, edit(_segment_lines(store, rid)), fmt=fmt)
    if not ignored:
        store.storage.delete(RunLayout(RunId.parse(rid)).event(3))  # so only the segment can serve event 3
    with caplog.at_level(logging.WARNING, logger="faber_runlog._log.eventlog"):
        assert truth == _read(store, rid)
        assert expected_state == EventLog(store.storage, RunId.parse(rid), segment_every=K).load_state().to_dict()
    assert ignored == ("ignoring segment" in caplog.text)


@pytest.mark.rule("protocol", 12)
def test_two_writers_writing_the_same_segment_leave_one_intact_segment(store_factory: Any) -> None:
    store = store_factory(segment_every=K)
    rid = _fill(store, K)
    layout = RunLayout(RunId.parse(rid))
    first = store.storage.read(layout.segment(1, K))
    for _ in range(2):  # two other writers that also claim to have seen the boundary write it again
        EventLog(store.storage, RunId.parse(rid), segment_every=K)._write_segment(K)  # noqa: SLF001 - a second writer's segment write, as the writer itself would
    assert first == store.storage.read(layout.segment(1, K))
    assert [(1, K)] == _segments(store, rid)
    assert _from_files(store, rid) == _read(store, rid)


def test_concurrent_writer_processes_write_intact_segments(shared_store_spec: dict[str, Any]) -> None:
    store = RunStore(
        shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None, segment_every=K
    )
    rid = store.create_run("acme", "seg").id
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "append", json.dumps(shared_store_spec), rid, str(K), "12", f"w{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        assert "done" in p.communicate(timeout=120)[0]
    truth = _from_files(store, rid)
    assert 24 == len(truth)
    layout = RunLayout(RunId.parse(rid))
    for first, last in _segments(store, rid):
        body = store.storage.read(layout.segment(first, last))
        lines = decode_segment(body or b"", rid, first, last).splitlines()
        assert truth[first - 1 : last] == [json.loads(line) for line in lines]
    assert truth == _read(store, rid)


def test_a_writer_killed_while_writing_a_segment_leaves_a_log_that_reads_and_continues(
    shared_store_spec: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    store = RunStore(
        shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None, segment_every=K
    )
    rid = store.create_run("acme", "seg").id
    proc = subprocess.Popen(
        [sys.executable, str(WORKERS), "die_in_segment", json.dumps(shared_store_spec), rid, str(K)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    assert (-signal.SIGKILL, "dying") == (proc.returncode, out.strip())
    with caplog.at_level(logging.WARNING, logger="faber_runlog._log.eventlog"):
        got = _read(store, rid)
    assert list(range(1, K + 1)) == [e["event_id"] for e in got]  # the boundary's event was acknowledged first
    assert "ignoring segment" in caplog.text
    run = store.get_run(rid)
    for i in range(K):
        run.log.emit("checkpoint", metadata={"label": f"after-{i}"})
    assert (K + 1, 2 * K) in _segments(store, rid)
    assert _from_files(store, rid) == _read(store, rid)
    assert 2 * K == run.state().last_event_id


def test_a_consolidated_run_reads_events_jsonl_and_cleanup_keeps_the_seal(store_factory: Any) -> None:
    store = store_factory(segment_every=K)
    run = store.create_run("acme", "seg")
    run.start()
    for i in range(2 * K):
        run.log.emit("checkpoint", metadata={"label": f"c{i}"})
    run.complete()
    truth = _from_files(store, run.id)
    record = consolidate(store, run.id)
    assert truth == [e.to_dict() for e in store.get_run(run.id).log.read(until=record.last_seq)]


# -- bounded reads on S3: requests counted -------------------------------------------------


def _counting_store(server: S3Server, **kwargs: Any) -> tuple[RunStore, list[tuple[str, str]]]:
    import s3fs

    calls: list[tuple[str, str]] = []

    class CountingS3(s3fs.S3FileSystem):  # type: ignore[misc]
        async def _call_s3(self, method: Any, *args: Any, **kw: Any) -> Any:
            calls.append((getattr(method, "__name__", str(method)), str(kw.get("Key", kw.get("Prefix", "")))))
            return await super()._call_s3(method, *args, **kw)

        def call_s3(self, method: Any, *args: Any, **kw: Any) -> Any:
            calls.append((getattr(method, "__name__", str(method)), str(kw.get("Key", kw.get("Prefix", "")))))
            return super().call_s3(method, *args, **kw)

    fs = CountingS3(**server.storage_options)
    return RunStore(fs=fs, root=f"{BUCKET}/runs-{uuid.uuid4().hex}", **kwargs), calls


@pytest.fixture
def long_run(s3_server: S3Server) -> tuple[RunStore, str, list[tuple[str, str]]]:
    store, calls = _counting_store(s3_server, segment_every=20, snapshot_every=25)
    rid = _fill(store, 100)  # events 1..100: five segments, snapshots at 25, 50, 75, 100
    calls.clear()
    return RunStore(fs=store.storage.fs, root=store.storage.root, segment_every=20, snapshot_every=25), rid, calls


def test_bounded_reads_on_s3_list_and_fetch_only_what_they_return(
    long_run: tuple[RunStore, str, list[tuple[str, str]]],
) -> None:
    store, rid, calls = long_run

    def fresh_log() -> EventLog:  # a new handle each time: nothing known, nothing cached
        return EventLog(store.storage, RunId.parse(rid), segment_every=20)

    assert list(range(1, 11)) == [e.event_id for e in fresh_log().read(limit=10)]
    assert len(calls) <= 3, calls
    calls.clear()
    assert list(range(51, 61)) == [e.event_id for e in fresh_log().read(since=50, until=60)]
    assert len(calls) <= 3, calls
    calls.clear()
    assert 42 == fresh_log().get(42).event_id
    assert 1 == len(calls), calls
    calls.clear()
    assert 100 == len(list(fresh_log().read()))
    assert len(calls) <= 100 // 20 + 3, calls  # LIST segments + one GET each + LIST the tail + HEAD events.jsonl


def test_state_at_on_s3_does_not_read_the_current_state_json(
    long_run: tuple[RunStore, str, list[tuple[str, str]]],
) -> None:
    store, rid, calls = long_run
    state = EventLog(store.storage, RunId.parse(rid), segment_every=20, snapshot_every=25).load_state(at=60)
    assert 60 == state.last_event_id
    assert not [c for c in calls if c[1].endswith("/state.json")], calls
    assert len(calls) <= 6, calls
    folded = RunState(run_id=rid)
    for event in store.get_run(rid).log.read(until=60):
        apply(folded, event)
    assert folded.to_dict() == state.to_dict()


# -- frames over segmented runs ------------------------------------------------------------


def test_frames_of_segmented_live_runs_equal_those_of_their_archive(store_factory: Any, tmp_path: Path) -> None:
    import pandas as pd

    from faber_runlog import Archiver

    store = store_factory(segment_every=K)
    for n in (2 * K, 3 * K + 2):
        run = store.create_run("acme", "seg")
        run.start()
        for i in range(n):
            run.log.emit("step_complete", phase="p", step=f"s{i}", metadata={"i": i, "nested": {"a": [1, "x"]}})
        run.complete()
    active = store.create_run("acme", "seg")
    active.start()
    for i in range(K + 1):
        active.log.emit("checkpoint", metadata={"label": f"c{i}"})
    live = store.events_frame(progress=False)
    assert 2 * K + 2 + 3 * K + 4 + K + 2 == len(live)
    key = ["run_id", "event_id"]
    # the frame equals the events read one by one through the log
    truth = [e.to_dict() for rid in sorted(set(live["run_id"])) for e in store.get_run(rid).log.read()]
    assert [(d["run_id"], d["event_id"], d.get("metadata", {})) for d in truth] == list(
        live.sort_values(key)[["run_id", "event_id", "metadata"]].itertuples(index=False, name=None)
    )
    archive = RunStore(str(tmp_path / "archive"))
    Archiver(store, archive, progress=False).archive_finished()
    archived = archive.events_frame(progress=False)
    sealed = store.events_frame(progress=False)  # the archived runs now end with their seal event, live too
    finished = sealed[sealed["run_id"] != active.id]

    def norm(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.sort_values(key, ignore_index=True)
        frame["metadata"] = [json.dumps(m, sort_keys=True) for m in frame["metadata"]]
        return frame

    pd.testing.assert_frame_equal(norm(finished.copy()), norm(archived.copy()))
    table = store.to_arrow(progress=False)
    assert (len(sealed), "timestamp[us, tz=UTC]") == (table.num_rows, str(table.schema.field("timestamp").type))


def test_frames_ignore_a_damaged_segment_and_read_the_files(
    store_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory(segment_every=K)
    rid = _fill(store, 2 * K + 1)
    before = store.events_frame(progress=False)
    key = RunLayout(RunId.parse(rid)).segment(1, K)
    store.storage.replace(key, (store.storage.read(key) or b"")[:-30])
    with caplog.at_level(logging.WARNING, logger="faber_runlog._log.eventlog"):
        after = store.events_frame(progress=False)
    assert "ignoring segment" in caplog.text
    assert before.drop(columns=["metadata"]).equals(after.drop(columns=["metadata"]))
    assert before["metadata"].tolist() == after["metadata"].tolist()


def test_a_fresh_handle_reads_the_state_with_one_probe_of_the_tail(s3_server: S3Server) -> None:
    store, calls = _counting_store(s3_server, segment_every=20, snapshot_every=25)
    rid = _fill(store, 30)  # a snapshot at 25, five events after it
    fresh = RunStore(fs=store.storage.fs, root=store.storage.root, segment_every=20, snapshot_every=25)
    calls.clear()
    assert 30 == fresh.get_run(rid).state().last_event_id
    lists = [key for method, key in calls if method == "list_objects_v2"]
    jsonl_gets = [key for method, key in calls if key.endswith("/events.jsonl")]
    assert (1, 1) == (len(lists), len(jsonl_gets)), calls
