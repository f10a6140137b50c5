"""Storage beyond the contract (tests/test_contract.py runs that on every backend): local containment, weak stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from faber_runlog import ConcurrencyUnsupported, RunStore, UnsafePath
from faber_runlog._storage.backends import Storage


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
