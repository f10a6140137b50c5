from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from faber_runlog import ConcurrencyUnsupported, RunStore, UnsafePath
from faber_runlog._storage.backends import Storage


@pytest.mark.rule("protocol", 1)
def test_create_is_exclusive(store: RunStore) -> None:
    s = store.storage
    assert s.create("a/b/x.json", b"first")
    assert not s.create("a/b/x.json", b"second")
    assert b"first" == s.read("a/b/x.json")


def test_create_refuses_empty_bodies(store: RunStore) -> None:
    # s3fs sends empty bodies through touch(), which overwrites without If-None-Match.
    with pytest.raises(ValueError, match="empty"):
        store.storage.create("a/empty.json", b"")
    assert not store.storage.exists("a/empty.json")


def test_replace_overwrites_and_read_of_missing_is_none(store: RunStore) -> None:
    s = store.storage
    s.replace("a/state.json", b"1")
    s.replace("a/state.json", b"2")
    assert (b"2", None) == (s.read("a/state.json"), s.read("a/missing.json"))


def test_read_many_and_listing(store: RunStore) -> None:
    s = store.storage
    for i in range(1, 6):
        assert s.create(f"r/events/{i:03d}.json", str(i).encode())
    got = s.read_many([f"r/events/{i:03d}.json" for i in (1, 3, 9)])
    assert {"r/events/001.json": b"1", "r/events/003.json": b"3", "r/events/009.json": None} == got
    assert ["001.json", "002.json", "003.json", "004.json", "005.json"] == s.list_names("r/events")
    assert ["004.json", "005.json"] == s.list_after("r/events", "003.json")
    # a limit lists only what a bounded read will use (MaxKeys on S3)
    assert (["002.json", "003.json"], [], ["005.json"]) == (
        s.list_after("r/events", "001.json", 2),
        s.list_after("r/events", "", 0),
        s.list_after("r/events", "004.json", 9),
    )
    assert [] == s.list_names("nothing/here")


def test_delete_is_idempotent(store: RunStore) -> None:
    s = store.storage
    s.replace("a/x", b"1")
    s.delete("a/x")
    s.delete("a/x")
    assert not s.exists("a/x")


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "a/./b", "", "a\\..\\b", "a/\x00"]
)
def test_keys_that_could_leave_the_root_are_refused(store: RunStore, key: str) -> None:
    with pytest.raises(UnsafePath):
        store.storage.path(key)
    with pytest.raises(UnsafePath):
        store.storage.replace(key, b"x")


def test_nothing_is_written_outside_a_local_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    s = RunStore(str(root)).storage
    for key in ["../outside", "../../outside", "x/../../outside"]:
        with pytest.raises(UnsafePath):
            s.create(key, b"x")
    assert [] == [p for p in tmp_path.rglob("*") if not str(p).startswith(str(root))]


class LaxFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """An in-memory store that ignores exclusive create, like some S3 look-alikes."""

    protocol = "lax"
    root_marker = "/"

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        super().pipe_file(path, value, mode="overwrite", **kwargs)


def test_store_without_conditional_writes_refuses_writers() -> None:
    store = RunStore(fs=LaxFileSystem(), root="/lax-refuse")
    with pytest.raises(ConcurrencyUnsupported, match="allow_unsafe_writers"):
        store.create_run("acme", "web")
    assert [] == store.list_runs()


def test_store_without_conditional_writes_works_when_allowed() -> None:
    store = RunStore(fs=LaxFileSystem(), root="/lax-allowed", allow_unsafe_writers=True)
    run = store.create_run("acme", "web")
    assert 1 == run.log.emit("workflow_start").event_id


def test_storage_kind_and_url(tmp_path: Path) -> None:
    assert "local" == RunStore(str(tmp_path)).storage.kind
    assert "memory" == RunStore("memory://kind-test").storage.kind
    assert str(tmp_path) == Storage(RunStore(str(tmp_path)).storage.fs, str(tmp_path)).url
