"""The run index's own log: what each change commits, when intents close, who writes checkpoints.

docs/concurrency.md, "The run index" (index rules 2, 4 and 5); the answers listings give from it are
tests/test_runindex.py's. On memory: the commits are read straight from the index folder.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from faber_runlog import RunStore
from faber_runlog._base import codec as _codec
from faber_runlog._log import index as _index
from faber_runlog._log.index import folder as index_folder

FOLDER = index_folder("acme", "web")
LOG = f"{FOLDER}/log/{0:014d}"  # the first folder of the index log: commits 1..100


def _store(**kwargs: Any) -> RunStore:
    return RunStore(f"memory://index-{uuid.uuid4().hex}", **kwargs)


def _commits(store: RunStore) -> list[list[dict[str, Any]]]:
    """The records of every commit of acme/web, in order."""
    names = sorted(
        n for n in store.storage.list_names(LOG) if n.endswith(".json") and n[:20].isdigit() and len(n) == 25
    )
    assert [f"{n:020d}.json" for n in range(1, len(names) + 1)] == names  # numbered from 1, no gap
    return [_codec.loads(store.storage.read(f"{LOG}/{n}") or b"")["records"] for n in names]


def _ops(commits: list[list[dict[str, Any]]]) -> list[list[str]]:
    return [[r["op"] for r in c] for c in commits]


@pytest.mark.rule("index", 1)
@pytest.mark.rule("index", 2)
def test_a_status_change_commits_an_intent_then_the_entry_closing_it_and_other_events_commit_nothing() -> None:
    store = _store()
    run = store.create_run("acme", "web")
    assert [["genesis"], ["intent"], ["entry"]] == _ops(_commits(store))  # the first run starts the index
    run.start()
    before = _commits(store)
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("checkpoint", metadata={"label": "halfway"})
    run.log.emit("step_complete", phase="build", step="compile")
    assert before == _commits(store)  # appends that cannot move the status: nothing
    run.fail("boom")
    intent, entry = _commits(store)[len(before) :]
    assert ([["intent"], ["entry"]], run.run_id.uuid, run.run_id.uuid) == (
        _ops([intent, entry]),
        intent[0]["u"],
        entry[0]["u"],
    )
    assert (intent[0]["nonce"], "failed", 5) == (
        entry[0]["nonce"],
        entry[0]["row"]["status"],
        entry[0]["row"]["last_event_id"],
    )


@pytest.mark.rule("index", 4)
def test_an_open_intent_is_closed_only_by_reindex_once_it_is_older_than_the_grace_and_readers_write_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store()
    run = store.create_run("acme", "web")
    run.start()
    with monkeypatch.context() as patch:
        patch.setattr(_index.IndexWriter, "entry", lambda *_args, **_kwargs: None)  # killed after its event
        run.fail("boom")
    names = store.storage.list_names(LOG)
    fresh = RunStore(fs=store.storage.fs, root=store.storage.root)
    assert [(run.id, "failed")] == [(s.run_id, s.status) for s in fresh.list_runs()]  # read from the run's log
    assert names == store.storage.list_names(LOG)  # the reader repaired nothing
    [young] = fresh.reindex()  # the intent is younger than the store's seal_grace: its writer may be claiming
    view = _index.read(store.storage, "acme", "web")
    assert view is not None
    assert ((run.id,), 0, {run.run_id.uuid}) == (young.corrected, young.closed, {u for u, _ in view.intents.values()})
    time.sleep(0.01)  # older than the grace of the store below (0.001 s); not a timing assert
    short = RunStore(fs=store.storage.fs, root=store.storage.root, seal_grace=0, claim_budget=0.001)
    [old] = short.reindex()
    view = _index.read(store.storage, "acme", "web")
    assert view is not None
    assert ((), 1, {}) == (old.corrected, old.closed, view.intents)


@pytest.mark.rule("index", 5)
def test_the_writer_that_claims_every_tenth_commit_writes_a_checkpoint_and_moves_the_hint() -> None:
    store = _store()
    runs = [store.create_run("acme", "web") for _ in range(5)]  # genesis + an intent and an entry each: 11
    assert 11 == len(_commits(store))
    checkpoints = sorted(n for n in store.storage.list_names(LOG) if n.endswith(".checkpoint.json"))
    assert ["00000000000000000010.checkpoint.json"] == checkpoints
    manifest = _codec.loads(store.storage.read(f"{LOG}/{checkpoints[0]}") or b"")
    assert manifest == _codec.loads(store.storage.read(f"{FOLDER}/_last_checkpoint") or b"")  # the hint is a copy
    # Commit 10 is the fifth run's intent: four runs and one open intent, the runs newest first.
    assert (10, 4, 1) == (manifest["version"], manifest["runs"], len(manifest["intents"]))
    [part] = manifest["parts"]
    body = [_codec.loads(ln) for ln in (store.storage.read(f"{FOLDER}/parts/{part['name']}") or b"").splitlines()]
    assert [r.run_id.uuid for r in reversed(runs[:4])] == [r["u"] for r in body]
    assert [runs[4].run_id.uuid] == [u for u, *_ in manifest["intents"].values()]


def _scan_ids(store: RunStore) -> list[tuple[str, str]]:
    return sorted((str(r.run_id), r.status) for r in store.list_runs(org="acme", project="web"))


@pytest.mark.rule("index", 9)
def test_commits_a_later_checkpoint_covers_are_pruned_and_readers_with_an_old_hint_still_answer_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_index, "SHARD", 20)  # folders of 20 commits, so a few dozen runs cross several
    store = _store()
    old_hint: bytes | None = None
    runs = []
    for i in range(40):  # 4 commits a run (two intents, two entries) + the genesis: 161 commits
        run = store.create_run("acme", "web")
        run.start()
        runs.append(run)
        if i == 2:
            old_hint = store.storage.read(f"{FOLDER}/_last_checkpoint")
    truth = sorted((str(r.run_id), r.state().status) for r in runs)
    folders = store.storage.list_names(f"{FOLDER}/log")
    kept = {f: store.storage.list_names(f"{FOLDER}/log/{f}") for f in folders}
    # Every folder wholly below the newest checkpoint's keeps only the genesis and its last commit.
    assert {"00000000000000000001.json", "00000000000000000020.json"} == set(kept[f"{0:014d}"])
    for k, f in enumerate(folders[1:-2], start=1):
        assert [f"{(k + 1) * 20:020d}.json"] == kept[f]
    assert truth == _scan_ids(store)
    # A hint moved back far (a slow writer), or none at all: the reader walks to the newest checkpoint.
    assert old_hint is not None
    store.storage.replace(f"{FOLDER}/_last_checkpoint", old_hint)
    assert truth == _scan_ids(RunStore(store.storage.url))
    store.storage.delete(f"{FOLDER}/_last_checkpoint")
    assert truth == _scan_ids(RunStore(store.storage.url))
    assert all(r.ok for r in RunStore(store.storage.url).verify_index(org="acme", project="web"))


@pytest.mark.rule("index", 9)
def test_a_reader_whose_commit_was_pruned_under_it_reads_the_index_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store()
    for _ in range(3):
        store.create_run("acme", "web").start()
    snap_before = _index.load(store.storage, "acme", "web")
    real = store.storage.read_many
    pruned: list[str] = []

    def read_many_after_a_prune(keys: Any) -> Any:
        keys = list(keys)
        commit = next((k for k in keys if "/log/" in k and not pruned), None)
        if commit is not None:  # a newer checkpoint's writer prunes it between this reader's LIST and GET
            pruned.append(commit)
            store.storage.delete(commit)
        return real(keys)

    monkeypatch.setattr(store.storage, "read_many", read_many_after_a_prune)
    with pytest.raises(_index.Stale, match="vanished"):
        _index.load(store.storage, "acme", "web")
    assert pruned
    assert 13 == snap_before.version  # the genesis and two intents and two entries per run


def _manifest(store: RunStore) -> dict[str, Any]:
    body = store.storage.read(f"{FOLDER}/_last_checkpoint")
    assert body is not None
    data: dict[str, Any] = _codec.loads(body)
    return data


@pytest.mark.rule("index", 5)
def test_each_part_has_a_parquet_copy_with_the_same_rows_and_retired_copies_go_with_their_parts() -> None:
    import io

    import pyarrow.parquet as pq

    store = _store()
    runs = [store.create_run("acme", "web", params={"work_id": str(i)}) for i in range(5)]
    for run in runs:
        run.start()  # 21 commits: checkpoints 10 and 20, the second retiring the first's parts
    manifest = _manifest(store)
    assert 20 == manifest["version"]
    files = set(store.storage.list_names(f"{FOLDER}/parts"))
    named = {p["name"] for p in manifest["parts"]} | {p["parquet"] for p in manifest["parts"]}
    retired = set(manifest["retired"])
    assert named | retired | {n.removesuffix(".jsonl") + ".parquet" for n in retired} == files
    for p in manifest["parts"]:
        lines = (store.storage.read(f"{FOLDER}/parts/{p['name']}") or b"").splitlines()
        expected = [_codec.loads(ln) for ln in lines]
        table = pq.read_table(io.BytesIO(store.storage.read(f"{FOLDER}/parts/{p['parquet']}") or b""))
        assert list(_index.PARQUET_COLUMNS) == table.column_names
        actual = [
            {**r, "params": _codec.loads(r["params"]), "tags": _codec.loads(r["tags"])} for r in table.to_pylist()
        ]
        assert expected == actual
    for run in runs:  # ten more commits: checkpoint 30 deletes the parts (and copies) checkpoint 20 retired
        run.complete()
    files = set(store.storage.list_names(f"{FOLDER}/parts"))
    assert not any(n.removesuffix(".jsonl") in f for n in retired for f in files)


def test_parts_get_their_parquet_copy_where_pyarrow_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError, as where it is absent
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    store = _store()
    runs = [store.create_run("acme", "web") for _ in range(6)]
    manifest = _manifest(store)
    names = set(store.storage.list_names(f"{FOLDER}/parts"))
    assert {p["parquet"] for p in manifest["parts"]} <= names
    assert sorted(r.id for r in runs) == sorted(s.run_id for s in store.list_runs())


def test_reindex_gives_parts_written_before_the_copies_their_parquet_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store()
    with monkeypatch.context() as older:
        older.setattr(_index, "_parquet_body", lambda _rows: None)  # what a version before the copies wrote
        runs = [store.create_run("acme", "web") for _ in range(6)]
        for run in runs[:2]:
            run.start()
    assert all("parquet" not in p for p in _manifest(store)["parts"])
    expected = sorted((r.id, r.state().status) for r in runs)
    [check] = store.verify_index(org="acme", project="web")
    assert (True, len(_manifest(store)["parts"])) == (check.ok, check.copied)
    [report] = store.reindex(org="acme", project="web")
    assert report.copied > 0
    manifest = _manifest(store)
    assert all("parquet" in p for p in manifest["parts"])
    names = set(store.storage.list_names(f"{FOLDER}/parts"))
    assert {p["parquet"] for p in manifest["parts"]} <= names
    assert expected == sorted((s.run_id, s.status) for s in RunStore(store.storage.url).list_runs())
    [again] = store.verify_index(org="acme", project="web")
    assert (True, 0) == (again.ok, again.copied)
