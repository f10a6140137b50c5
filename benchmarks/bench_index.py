"""The run index (issue 23): "the 20 newest failed runs of a project" among N runs, index vs scan vs SQLite.

A local store of N runs (every 25th failed) is built through the library; the
query runs on a fresh store handle each time (nothing cached), answered from
the index, by the scan every listing did before it (the index switched off on
that handle), and by a SQLite table of the same summaries with an index on
(project, status, created_at), what a user would pick instead.
"""

from __future__ import annotations

import sqlite3
import tempfile
from typing import Any

from _common import Row, best_of

from faber_runlog import RunStore


def _build(root: str, n: int) -> RunStore:
    store = RunStore(root, fsync=False)
    for i in range(n):
        run = store.create_run("acme", "web", params={"i": i})
        if i % 25 == 0:
            run.start()
            run.fail("boom")
    return store


def _sqlite(store: RunStore) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("create table runs (run_id text, project text, status text, created_at text, params text)")
    db.execute("create index by_status on runs (project, status, created_at)")
    rows = [(s.run_id, s.project, s.status, s.created_at, str(s.params)) for s in store.list_runs()]
    db.executemany("insert into runs values (?, ?, ?, ?, ?)", rows)
    db.commit()
    return db


def _query(store: RunStore) -> list[str]:
    return [s.run_id for s in store.list_runs(org="acme", project="web", status="failed", limit=20)]


def run(*, quick: bool) -> list[Row]:
    rows: list[Row] = []
    for n in (200, 1000) if quick else (1000, 10_000):
        with tempfile.TemporaryDirectory() as tmp:
            built = _build(f"{tmp}/runs", n)
            root = built.storage.root

            def indexed() -> Any:
                return _query(RunStore(root))

            def scanned() -> Any:
                handle = RunStore(root)
                handle._index_view = lambda org, project: None  # type: ignore[method-assign]  # noqa: SLF001, ARG005  (the scan, for comparison)
                return _query(handle)

            db = _sqlite(built)

            def from_sqlite() -> Any:
                return [
                    r[0]
                    for r in db.execute(
                        "select run_id from runs where project = 'web' and status = 'failed' "
                        "order by created_at desc limit 20"
                    )
                ]

            assert indexed() == scanned() == from_sqlite()
            repeats = 5 if n <= 1000 else 3
            ours = best_of(repeats, indexed) * 1000
            scan = best_of(max(1, repeats - 2), scanned) * 1000
            lite = best_of(repeats, from_sqlite) * 1000
            name = f"20 newest failed of {n:,} local runs"
            rows.append(Row(f"{name}: index vs scan", ours, "scan of every run", scan, "ms", "", ours / scan, None))
            rows.append(
                Row(f"{name}: index vs SQLite", ours, "SQLite table, indexed", lite, "ms", "", ours / lite, None)
            )
    return rows
