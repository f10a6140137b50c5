"""The bulk reader behind the frames: many runs in batches give exactly what each run's log gives.

Runs of every shape in one store (short, exactly one segment, long with
segments, a damaged segment, consolidated with and without its event files, an
upcast event type, empty), read in tiny groups so runs and segments are split
across batches; requests counted on S3.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pandas as pd
import pytest
from conftest import BUCKET, S3Server

from faber_runlog import Registry, RunStore, consolidate
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import RunLayout
from faber_runlog._log.bulk import read_logs
from faber_runlog._log.eventlog import EventLog
from faber_runlog._services import analysis as analysis
from faber_runlog.errors import CorruptEvent

# Services over the storage contract (pinned on every backend elsewhere): memory and local, a few tests on S3.
pytestmark = pytest.mark.backends("memory", "local")

K = 5
_COLUMNS = ["run_id", "event_id", "type", "phase", "step", "metadata"]


def _seconds(data: dict[str, Any]) -> dict[str, Any]:
    meta = dict(data["metadata"])
    meta["seconds"] = meta.pop("ms") / 1000
    return {**data, "metadata": meta, "schema_version": 2}


def _registries() -> tuple[Registry, Registry]:
    """v1 writes ``measured`` events with ``ms``; v2 reads them upcast to ``seconds``."""
    v1 = Registry.isolated()
    v1.register_event_type("measured", {"required": ["metadata"]})
    v2 = Registry.isolated()
    v2.register_event_type("measured", {"required": ["metadata"]}, version=2)
    v2.register_upcaster("measured", 1, _seconds)
    return v1, v2


def _emit(store: RunStore, n: int, etype: str = "checkpoint", *, end: bool = False) -> str:
    run = store.create_run("acme", "bulk")
    run.start()
    for i in range(n):
        if etype == "measured":
            run.log.emit("measured", metadata={"ms": 1000 + i})
        else:
            run.log.emit(etype, phase="p", step=f"s{i}", metadata={"label": f"c{i}", "nested": {"a": [1, "x"]}})
    if end:
        run.complete()
    return run.id


def _every_shape(store: RunStore) -> dict[str, str]:
    """One run of each shape the bulk reader tells apart; their ids by name."""
    ids = {
        "short": _emit(store, 2),
        "one_segment": _emit(store, K - 1),  # K events with workflow_start: exactly one segment
        "long": _emit(store, 3 * K + 1),
        "damaged": _emit(store, 3 * K + 1),
        "measured": _emit(store, 2 * K + 1, "measured"),
        "sealed_cleaned": _emit(store, 2 * K, end=True),
        "sealed_kept": _emit(store, K + 2, end=True),
        "empty": store.create_run("acme", "bulk").id,
    }
    layout = RunLayout(RunId.parse(ids["damaged"]))
    key = layout.segment(K + 1, 2 * K)  # the second segment: the first is read, then the files from K
    store.storage.replace(key, (store.storage.read(key) or b"")[:-20])
    for name in ("sealed_cleaned", "sealed_kept"):
        record = consolidate(store, ids[name])
        if name == "sealed_cleaned":  # what cleanup leaves: events.jsonl and the seal
            layout = RunLayout(RunId.parse(ids[name]))
            for seq in range(1, record.last_seq + 1):
                store.storage.delete(layout.event(seq))
    return ids


def _through_logs(store: RunStore, run_ids: list[str]) -> list[tuple[Any, ...]]:
    return sorted(
        (rid, e.event_id, e.type, e.phase, e.step, e.metadata)
        for rid in run_ids
        for e in store.get_run(rid).log.read()
        if e.type != "log_sealed"  # a protocol event: a frame shows it only when types= names it
    )


def _frame_rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    plain = frame[_COLUMNS].astype(object)
    plain = plain.where(plain.notna(), None)
    return sorted(tuple(row) for row in plain.itertuples(index=False, name=None))


@pytest.fixture
def shapes(store_factory: Any) -> tuple[RunStore, dict[str, str]]:
    v1, v2 = _registries()
    writer = store_factory(segment_every=K, registry=v1)
    ids = _every_shape(writer)
    reader = RunStore(fs=writer.storage.fs, root=writer.storage.root, segment_every=K, registry=v2)
    return reader, ids


@pytest.mark.backends("memory", "local", "s3")
def test_bulk_frames_of_runs_of_every_shape_equal_each_run_read_through_its_log(
    shapes: tuple[RunStore, dict[str, str]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, ids = shapes
    truth = _through_logs(store, sorted(ids.values()))
    checked: list[tuple[str, int]] = []
    read_mappings = EventLog.read_mappings

    def spy(log: EventLog, since: int = 0) -> Any:
        checked.append((str(log.run_id), since))
        return read_mappings(log, since)

    monkeypatch.setattr(EventLog, "read_mappings", spy)
    for batch in (2048, 3):  # 3: runs and segments split across groups and record batches
        monkeypatch.setattr(analysis, "_BATCH_ROWS", batch)
        checked.clear()
        with caplog.at_level(logging.WARNING, logger="faber_runlog._log.eventlog"):
            frame = store.events_frame(progress=False)
        assert truth == _frame_rows(frame)
        assert "ignoring segment" in caplog.text
        # only the run with the damaged segment is read the checked way, from the event before that segment
        assert [(ids["damaged"], K)] == checked
        measured = frame[frame["type"] == "measured"]["metadata"].tolist()
        assert [{"seconds": (1000 + i) / 1000} for i in range(2 * K + 1)] == measured  # the reader's upcaster
        assert len(frame) == store.to_arrow(progress=False).num_rows


def test_bulk_pieces_give_every_event_once_in_order_and_a_run_s_pieces_together(
    shapes: tuple[RunStore, dict[str, str]],
) -> None:
    store, ids = shapes
    rids = [RunId.parse(r) for r in sorted(ids.values())]
    seen: dict[str, list[int]] = {}
    order: list[str] = []
    for rid, first, lines in read_logs(store.storage, rids, segment_every=K, registry=store.registry, budget=3):
        assert 1 <= len(lines) <= 3
        seen.setdefault(str(rid), []).extend(range(first, first + len(lines)))
        if not order or order[-1] != str(rid):
            order.append(str(rid))
    assert sorted(set(order)) == order  # no run comes back after another one started
    expected = {r: list(range(1, store.get_run(r).log.last_event_id() + 1)) for r in ids.values()}
    assert {r: s for r, s in expected.items() if s} == seen


def test_a_bulk_frame_over_a_consolidated_run_with_a_cut_events_jsonl_skips_it_as_its_log_refuses_it(
    store: RunStore,
) -> None:
    good = _emit(store, 2)
    rid = _emit(store, 4, end=True)
    consolidate(store, rid)
    layout = RunLayout(RunId.parse(rid))
    body = store.storage.read(layout.jsonl) or b""
    store.storage.replace(layout.jsonl, body[: body.rfind(b"\n", 0, -1) + 1])  # the last line lost
    for seq in range(1, body.count(b"\n") + 1):
        store.storage.delete(layout.event(seq))
    with pytest.raises(CorruptEvent):
        list(store.get_run(rid).log.read())
    frame = store.events_frame(progress=False)
    assert [good] == frame["run_id"].unique().tolist()
    assert [(rid, "damaged")] == [(p.run_id, p.kind) for p in frame.attrs["problems"]]
    assert "CorruptEvent" in frame.attrs["problems"][0].error


def test_a_bulk_frame_on_s3_costs_one_list_per_run_and_one_get_per_object(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    calls: list[str] = []

    class CountingS3(s3fs.S3FileSystem):  # type: ignore[misc]
        async def _call_s3(self, method: Any, *args: Any, **kw: Any) -> Any:
            calls.append(getattr(method, "__name__", str(method)))
            return await super()._call_s3(method, *args, **kw)

        def call_s3(self, method: Any, *args: Any, **kw: Any) -> Any:
            calls.append(getattr(method, "__name__", str(method)))
            return super().call_s3(method, *args, **kw)

    store = RunStore(fs=CountingS3(**s3_server.storage_options), root=f"{BUCKET}/runs-{uuid.uuid4().hex}")
    short = [_emit(store, 3) for _ in range(4)]
    sealed = _emit(store, 3, end=True)
    record = consolidate(store, sealed)
    for seq in range(1, record.last_seq + 1):
        store.storage.delete(RunLayout(RunId.parse(sealed)).event(seq))
    store.events_frame(run_ids=[short[0]], progress=False)  # warm: the session and the imports
    monkeypatch.setattr(EventLog, "read_mappings", None)  # every run here is read in the batch, none one by one
    calls.clear()
    frame = store.events_frame(run_ids=[*short, sealed], progress=False)
    assert 4 * 4 + record.last_seq == len(frame)  # the seal is read (a GET) but is not a row
    # short runs: a LIST and one GET per event; the consolidated run: a LIST, events.jsonl and the seal
    assert {"list_objects_v2": 5, "get_object": 4 * 4 + 2} == {c: calls.count(c) for c in set(calls)}
