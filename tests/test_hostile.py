"""Hostile input: every bad id, type, value or stored file gives a precise error and writes nothing.

The whole store tree (every key and its bytes) is captured before and after
each attempt; path traversal attempts are checked against the real
filesystem around a local store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _faultreport import record
from conftest import soak_scale
from hypothesis import given, settings
from hypothesis import strategies as st

from faber_runlog import (
    CorruptEvent,
    CorruptState,
    InvalidEvent,
    InvalidRunId,
    RunId,
    RunNotFound,
    RunStore,
    UnsafePath,
)
from faber_runlog._format.layout import RunLayout
from faber_runlog._services.verify import verify_run


def tree(store: RunStore) -> dict[str, bytes]:
    """Every object under the store root with its bytes."""
    fs, root = store.storage.fs, store.storage.root
    if store.storage.kind == "s3":
        fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in sorted(fs.find(root))}


def files_under(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def deep(n: int) -> Any:
    value: Any = "bottom"
    for _ in range(n):
        value = {"d": value}
    return value


class NotJson:
    pass


BAD_VALUES: dict[str, Any] = {
    "nan": float("nan"),
    "infinity": float("inf"),
    "minus infinity": float("-inf"),
    "nested 40 deep": deep(40),
    "2 MiB string": "x" * (2 << 20),
    "integer over 64 bits": 2**70,
    "lone surrogate": "bad \ud800 text",
    "lone surrogate key": {"\udc80": 1},
    "non-string key": {1: "x"},
    "bytes": b"raw",
    "set": {1, 2},
    "object": NotJson(),
}


@pytest.mark.backends("memory", "local")  # validation happens before any storage call
@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_field_values_are_refused_precisely_and_write_nothing(store: RunStore, name: str) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    before = tree(store)
    with pytest.raises(InvalidEvent) as caught:
        run.log.emit("checkpoint", metadata={"label": "x", "value": BAD_VALUES[name]})
    assert run.id in str(caught.value)
    assert "metadata" in str(caught.value)
    assert before == tree(store)
    assert 1 == store.get_run(run.id).state().last_event_id
    record(
        "test_hostile: bad field values (all backends)", name, 1, "InvalidEvent naming run and field, store unchanged"
    )


@pytest.mark.backends("memory", "local")  # validation happens before any storage call
@pytest.mark.parametrize("name", ["nan", "integer over 64 bits", "lone surrogate", "bytes"])
def test_bad_params_are_refused_and_create_no_run(store: RunStore, name: str) -> None:
    before = tree(store)
    with pytest.raises(ValueError, match="params"):
        store.create_run("acme", "web", params={"p": BAD_VALUES[name]})
    assert before == tree(store)


@pytest.mark.slow
@settings(max_examples=soak_scale(150, 50), deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_fuzzed_run_ids_are_either_valid_or_refused_without_io(text: str) -> None:
    store = RunStore(f"memory://hostile-ids-{abs(hash(text))}")
    try:
        rid = RunId.parse(text)
    except InvalidRunId:
        with pytest.raises(InvalidRunId, match=r"run id|invalid"):
            store.get_run(text)
        return
    assert text == str(rid)
    with pytest.raises(RunNotFound, match=str(rid)):
        store.get_run(text)


@pytest.mark.slow
@settings(max_examples=soak_scale(150, 50), deadline=None)
@given(st.text(max_size=70))
def test_fuzzed_event_types_are_refused_unless_registered(etype: str) -> None:
    store = RunStore("memory://hostile-types")
    run = store.create_run("acme", "web")
    from faber_runlog import event_types

    if etype in event_types():
        return
    before = tree(store)
    with pytest.raises(InvalidEvent, match="unknown event type"):
        run.log.emit(etype)
    assert before == tree(store)


DAMAGE: dict[str, bytes] = {
    "invalid UTF-8": b'{"event_id": 2, "type": "checkpoint", "metadata": {"label": "\xff\xfe"}}',
    "truncated": b'{"event_id": 2, "type": "check',
    "a JSON array": b"[1, 2, 3]",
    "a JSON string": b'"event"',
    "null": b"null",
    "duplicate event_id key": b'{"event_id": 2, "event_id": 7, "type": "checkpoint", "timestamp": "t", "run_id": "r"}',
    "NaN literal": b'{"event_id": 2, "type": "checkpoint", "value": NaN}',
    "empty": b" ",
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_event_file_gives_corrupt_event_and_reads_change_nothing(store: RunStore, name: str) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    store.storage.replace(RunLayout(run.run_id).event(2), DAMAGE[name])
    before = tree(store)
    with pytest.raises(CorruptEvent) as caught:
        list(store.get_run(run.id).log.read())
    assert (run.id, 2) == (caught.value.run_id, caught.value.seq)
    assert caught.value.path.endswith("events/00000000000000000002.json")
    with pytest.raises(CorruptEvent):
        store.get_run(run.id).state()
    report = verify_run(store, run.id)
    assert [2] == [p.seq for p in report.problems]
    assert before == tree(store)
    record(
        "test_hostile: damaged event file on disk (all backends)",
        name,
        1,
        "CorruptEvent naming run, seq and file; verify flags it; nothing written",
    )


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b"[]", b'{"run_id": 3}', b"{"])
def test_damaged_metadata_gives_corrupt_state(store: RunStore, body: bytes) -> None:
    run = store.create_run("acme", "web")
    store.storage.replace(RunLayout(run.run_id).metadata, body)
    before = tree(store)
    with pytest.raises(CorruptState, match=run.id):
        store.get_run(run.id)
    assert before == tree(store)


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe", b"[]", b'{"run_id": "x", "last_event_id": "many"}', b'{"last_event_id": 1, "last_event_id": 0}'],
)
def test_a_damaged_snapshot_is_ignored_and_the_state_is_folded_from_events(store: RunStore, body: bytes) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("checkpoint", metadata={"label": "a"})
    expected = run.state()
    store.storage.replace(RunLayout(run.run_id).state, body)
    assert expected == store.get_run(run.id).state()


TRAVERSALS = ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a\\..\\b", "a\x00b", "..", ""]


@pytest.mark.parametrize("key", TRAVERSALS)
def test_storage_keys_that_could_leave_the_root_are_refused(tmp_path: Path, key: str) -> None:
    store = RunStore(str(tmp_path / "runs"))
    outside = files_under(tmp_path)
    for op in (
        lambda: store.storage.create(key, b"x"),
        lambda: store.storage.replace(key, b"x"),
        lambda: store.storage.read(key),
        lambda: store.storage.delete(key),
        lambda: store.storage.makedirs(key),
    ):
        with pytest.raises(UnsafePath):
            op()
    assert outside == files_under(tmp_path)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(
    ("org", "project", "run_id"),
    [
        ("..", "web", None),
        ("acme", "../../escape", None),
        ("acme", "web", "acme/web/../../../escape"),
        ("acme", "web", "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55/../../x"),
        ("acme", "web", "../web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55"),
        ("Acme", "web", None),
        ("acme\u0131", "web", None),
    ],
)
def test_path_traversal_through_run_ids_creates_nothing_outside_the_root(
    tmp_path: Path, org: str, project: str, run_id: str | None
) -> None:
    root = tmp_path / "store" / "runs"
    store = RunStore(str(root))
    before = files_under(tmp_path)
    with pytest.raises(InvalidRunId):
        store.create_run(org, project, run_id=run_id)
    if run_id is not None:
        with pytest.raises(InvalidRunId):
            store.get_run(run_id)
        with pytest.raises(InvalidRunId):
            store.has_run(run_id)
    assert before == files_under(tmp_path)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "store" / "escape").exists()
    record(
        "test_hostile: path traversal via org/project/run id",
        repr(run_id or f"{org}/{project}"),
        1,
        "InvalidRunId before any I/O; filesystem around the store unchanged",
    )


def test_gateway_config_hostile_files_give_a_precise_error(tmp_path: Path) -> None:
    gateway = pytest.importorskip("faber_runlog._services.gateway")
    bodies = {
        "invalid UTF-8": b'{"version": 1, "root": "\xff"}',
        "a JSON array": b"[]",
        "a number": b"3",
        "truncated": b'{"version": ',
        "NaN literal": b'{"version": NaN}',
        "deeply nested": b'{"x": ' * 200 + b"1" + b"}" * 200,
    }
    for name, body in bodies.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_bytes(body)
        before = files_under(tmp_path)
        with pytest.raises(gateway.InvalidGatewayConfig) as caught:
            gateway.load_config(path)
        assert str(path) in str(caught.value), name
        assert before == files_under(tmp_path)
        record("test_hostile: hostile gateway.json", name, 1, "InvalidGatewayConfig naming the file, nothing written")
