"""The run index (issue 23): "the 20 newest failed runs of a project" among N runs, index vs scan vs SQLite.

A local store of N runs (every 25th failed) is built through the library; the
query runs on a fresh store handle each time (nothing cached), answered from
the index, by the scan every listing did before it (the index switched off on
that handle), and by a SQLite table of the same summaries with an index on
(project, status, created_at), what a user would pick instead.

At 100,000 runs (and for the full listing and on moto S3) the index is
written directly (``_index.rebuild``: one checkpoint of synthetic rows of
ended runs, the layout a compaction leaves) rather than through 100,000
``create_run`` calls; ended runs are listed from their rows, so no run folder
is read either way.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
import uuid
from typing import Any

from _common import Row, best_of

from faber_runlog import RunStore
from faber_runlog._log import index as _index


def _build(root: str, n: int) -> RunStore:
    store = RunStore(root, fsync=False)
    for i in range(n):
        run = store.create_run("acme", "web", params={"i": i})
        if i % 25 == 0:
            run.start()
            run.fail("boom")
    return store


def _sqlite(rows: list[tuple[Any, ...]]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute(
        "create table runs (run_id text, project text, status text, created_at text, last_event_id integer, "
        "updated_at text, current_phase text, current_step text, params text, tags text, parent_run_id text)"
    )
    db.execute("create index by_status on runs (project, status, created_at)")
    db.executemany("insert into runs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    return db


def _sqlite_of(store: RunStore) -> sqlite3.Connection:
    return _sqlite(
        [
            (
                *(s.run_id, s.project, s.status, s.created_at, s.last_event_id, s.updated_at, s.current_phase),
                *(s.current_step, json.dumps(s.params), json.dumps(s.tags), s.parent_run_id),
            )
            for s in store.list_runs()
        ]
    )


def _failed_20(db: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "select run_id from runs where project = 'web' and status = 'failed' order by created_at desc limit 20"
        )
    ]


def _query(store: RunStore) -> list[str]:
    return [s.run_id for s in store.list_runs(org="acme", project="web", status="failed", limit=20)]


def _synthetic(store: RunStore, n: int) -> sqlite3.Connection:
    """An index of ``n`` ended runs of acme/web (every 25th failed) and the SQLite table of the same rows."""
    records: list[dict[str, Any]] = []
    table: list[tuple[Any, ...]] = []
    for i in range(n):
        u = str(uuid.UUID(int=i + 1, version=4))
        at = f"2026-{1 + i // 2_000_000:02d}-01T00:00:00.{i:06d}Z"
        status = "failed" if i % 25 == 0 else "completed"
        listing = {"created_at": at, "params": {"i": i}, "tags": {}, "parent_run_id": None}
        row = {"u": u, "status": status, "last_event_id": 4, "updated_at": at, "current_phase": "build"}
        row.update(current_step="test", listing=listing)
        records.append({"op": "entry", "u": u, "nonce": None, "row": row})
        table.append((f"acme/web/{u}", "web", status, at, 4, at, "build", "test", json.dumps({"i": i}), "{}", None))
    _index.rebuild(store.storage, "acme", "web", 10, records)
    return _sqlite(table)


def _row(name: str, ours: float, peer_name: str, peer: float, target: float | None) -> Row:
    ratio = ours / peer if peer else float("inf")
    ok = None if target is None else ratio <= target
    return Row(name, ours, peer_name, peer, "ms", f"<= {target:g}x" if target is not None else "", ratio, ok)


def _built(*, quick: bool) -> list[Row]:
    rows: list[Row] = []
    times: dict[int, float] = {}
    for n in (200, 1000) if quick else (200, 2000, 10_000):
        with tempfile.TemporaryDirectory() as tmp:
            built = _build(f"{tmp}/runs", n)
            root = built.storage.root

            def indexed() -> Any:
                return _query(RunStore(root))

            def scanned() -> Any:
                handle = RunStore(root)
                handle._index_view = lambda org, project: None  # type: ignore[method-assign]  # noqa: SLF001, ARG005  (the scan, for comparison)
                return _query(handle)

            db = _sqlite_of(built)
            assert indexed() == scanned() == _failed_20(db)
            repeats = 7 if n <= 2000 else 5
            ours = best_of(repeats, indexed) * 1000
            times[n] = ours
            scan = best_of(1 if n > 2000 else 3, scanned) * 1000
            lite = best_of(repeats, lambda: _failed_20(db)) * 1000  # called right here
            name = f"20 newest failed of {n:,} local runs"
            rows.append(_row(f"{name}: index vs scan", ours, "scan of every run", scan, None))
            rows.append(_row(f"{name}: index vs SQLite", ours, "SQLite table, indexed", lite, None))
    small, large = min(times), max(times)
    rows.append(
        _row(f"20 newest failed: {large:,} vs {small:,} local runs", times[large], f"{small:,} runs", times[small], 3)
    )
    return rows


def _synthetic_rows(*, quick: bool) -> list[Row]:
    rows: list[Row] = []
    for n in (20_000,) if quick else (100_000,):
        with tempfile.TemporaryDirectory() as tmp:
            store = RunStore(f"{tmp}/runs", fsync=False)
            db = _synthetic(store, n)
            root = store.storage.root
            assert _query(RunStore(root)) == _failed_20(db)
            ours = best_of(7, lambda: _query(RunStore(root))) * 1000  # called right here
            lite = best_of(7, lambda: _failed_20(db)) * 1000  # called right here
            rows.append(_row(f"20 newest failed of {n:,} local runs (index written whole)", ours, "SQLite", lite, None))
    n = 2000 if quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(f"{tmp}/runs", fsync=False)
        db = _synthetic(store, n)
        root = store.storage.root

        def everything() -> int:
            return len(RunStore(root).list_runs(org="acme", project="web"))

        def from_sqlite() -> int:
            out = [
                (*r[:8], json.loads(r[8]), json.loads(r[9]), r[10])
                for r in db.execute("select * from runs where project = 'web' order by created_at desc")
            ]
            return len(out)

        assert everything() == from_sqlite() == n
        ours = best_of(5, everything) * 1000
        lite = best_of(5, from_sqlite) * 1000
        rows.append(_row(f"full listing of {n:,} local ended runs", ours, "SQLite: the same summaries", lite, 3))
    return rows


def _checkpoint_ms(n: int) -> float:
    """Milliseconds of the index commit that writes a checkpoint (9 new runs folded in) over ``n`` runs."""
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(f"{tmp}/runs", fsync=False)
        _synthetic(store, n)
        writer = _index.IndexWriter(store.storage)
        best = float("inf")
        for k in range(5):
            for j in range(9):
                u = str(uuid.uuid4())
                at = f"2027-01-01T00:00:{k:02d}.{j:06d}Z"
                row = {"u": u, "status": "created", "last_event_id": 0, "updated_at": at, "current_phase": None}
                row.update(
                    current_step=None, listing={"created_at": at, "params": {}, "tags": {}, "parent_run_id": None}
                )
                writer.commit("acme", "web", [{"op": "entry", "u": u, "nonce": None, "row": row}])
            t = time.perf_counter()
            n_ = writer.commit("acme", "web", [{"op": "close", "nonce": "none"}])
            best = min(best, time.perf_counter() - t)
            assert n_ % _index.CHECKPOINT_EVERY == 0
        return best * 1000


def _checkpoints(*, quick: bool) -> list[Row]:
    small, large = (1000, 20_000) if quick else (1000, 100_000)
    ours, peer = _checkpoint_ms(large), _checkpoint_ms(small)
    return [_row(f"index checkpoint (9 commits folded) over {large:,} runs", ours, f"over {small:,}", peer, 3)]


def _active(*, quick: bool) -> list[Row]:
    events = 100 if quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        active = RunStore(f"{tmp}/active", fsync=False)
        fresh = RunStore(f"{tmp}/fresh", fsync=False)
        for _ in range(60):
            run = active.create_run("acme", "web")
            run.start()
            for j in range(events - 1):
                run.log.emit("step_start", phase="build", step=f"s{j}")
            fresh.create_run("acme", "web").start()
        a_root, f_root = active.storage.root, fresh.storage.root
        ours = best_of(5, lambda: RunStore(a_root).list_runs()) * 1000
        peer = best_of(5, lambda: RunStore(f_root).list_runs()) * 1000
    return [_row(f"list 60 active runs of {events} events", ours, "60 fresh runs", peer, 2)]


def _moto_rows(*, quick: bool) -> list[Row]:
    from bench_core import _counting_fs, _moto

    rows: list[Row] = []
    server, opts = _moto()
    try:
        fs = _counting_fs(opts)
        fs.mkdir("bench-index")
        for n in (600, 2000) if quick else (600, 10_000):
            store = RunStore(fs=fs, root=f"bench-index/runs-{uuid.uuid4().hex}")
            db = _synthetic(store, n)
            assert _query(store) == _failed_20(db)
            fs.calls.clear()
            ours = best_of(1, lambda: _query(RunStore(fs=fs, root=store.storage.root))) * 1000
            requests = sum(fs.calls.values())
            rows.append(
                Row(
                    f"S3 (moto) 20 newest failed of {n:,} runs: requests ({ours:.0f} ms)",
                    requests,
                    "target",
                    12,
                    "req",
                    "<= 12",
                    requests / 12,
                    requests <= 12,
                )
            )
    finally:
        server.stop()
    return rows


def run(*, quick: bool) -> list[Row]:
    return (
        _built(quick=quick)
        + _synthetic_rows(quick=quick)
        + _checkpoints(quick=quick)
        + _active(quick=quick)
        + _moto_rows(quick=quick)
    )
