"""Caches and settings that must not hide the log (issue 19 section 2).

A cache check must not be satisfiable by a deletion; the seal grace a cleaner waits is the one the
run's writers rely on, whatever each handle was opened with; snapshot retention holds across handles.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest

from faber_runlog import Archiver, RetentionPolicy, RunArchived, RunStore
from faber_runlog._format.layout import RunLayout, parse_seq_name


def _archive_and_clean(store: RunStore, run_id: str) -> list[str]:
    archiver = Archiver(store, RunStore(f"memory://archive-{uuid.uuid4().hex}"), progress=False)
    archiver.archive(run_id)
    return list(archiver.cleanup(RetentionPolicy(), dry_run=False).removed)


@pytest.mark.rule("protocol", 11)
def test_list_runs_does_not_trust_a_stale_summary_once_cleanup_removed_the_event_after_it(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"), seal_grace=0)
    run = store.create_run("acme", "web")
    run.start()
    layout = RunLayout(run.run_id)
    stale = store.storage.read(layout.summary)  # "running, 1 event": left behind by a writer killed after its claim
    for i in range(3):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    run.complete()
    assert stale is not None
    store.storage.replace(layout.summary, stale)
    assert [run.id] == _archive_and_clean(store, run.id)
    store.storage.replace(layout.summary, stale)  # the killed writer's summary, written late
    [listed] = store.list_runs()
    assert ("completed", 6) == (listed.status, listed.last_event_id)  # five events and the seal


@pytest.mark.rule("protocol", 6)
def test_a_cleaner_with_a_shorter_seal_grace_waits_the_grace_the_run_recorded(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    writer_store = RunStore(root)  # the default grace: its writers skip the post-create check within half of it
    run = writer_store.create_run("acme", "web")
    stalled = writer_store.get_run(run.id).log
    stalled.emit("workflow_start")  # this handle knows the tail is 1, and knew it a moment ago
    for i in range(3):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    run.complete()
    cleaner = RunStore(root, seal_grace=0)
    assert [] == _archive_and_clean(cleaner, run.id)  # kept: the run recorded the default grace
    names = sorted(n for n in cleaner.storage.list_names(RunLayout(run.run_id).events) if parse_seq_name(n))
    assert 6 == len(names)
    try:
        stalled.emit("checkpoint", metadata={"label": "late"})
    except RunArchived:
        pass
    assert [1, 2, 3, 4, 5, 6] == [e.event_id for e in writer_store.get_run(run.id).log.read()]


@pytest.mark.rule("protocol", 8)
def test_snapshot_retention_holds_across_many_writer_handles(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"), snapshot_every=5)
    run = store.create_run("acme", "web")
    handles = [store.get_run(run.id).log for _ in range(6)]
    for i in range(300):
        handles[i % 6].emit("checkpoint", metadata={"label": "x" * 20})
    seqs = sorted(s for n in store.storage.list_names(RunLayout(run.run_id).snapshots) if (s := parse_seq_name(n)))
    assert len(seqs) <= 2, seqs
    assert all(b - a >= 4 * 5 for a, b in itertools.pairwise(seqs)), seqs


@pytest.mark.rule("protocol", 6)
def test_a_writer_stalled_across_a_cleanup_is_refused_and_the_number_it_recreated_is_removed() -> None:
    store = RunStore(f"memory://runs-{uuid.uuid4().hex}", seal_grace=0)  # the run records 0: cleaned at once
    run = store.create_run("acme", "web")
    stalled = store.get_run(run.id).log
    stalled.emit("workflow_start")  # this handle knows the tail is 1, and nothing after
    for i in range(3):
        run.log.emit("checkpoint", metadata={"label": str(i)})
    run.complete()
    assert [run.id] == _archive_and_clean(store, run.id)  # events 1..5 removed, the seal (6) kept
    layout = RunLayout(run.run_id)
    before = [e.to_dict() for e in store.get_run(run.id).log.read()]
    with pytest.raises(RunArchived):
        stalled.emit("checkpoint", metadata={"label": "late"})  # its create of number 2 succeeds: it checks
    assert (False, before) == (
        store.storage.exists(layout.event(2)),
        [e.to_dict() for e in store.get_run(run.id).log.read()],
    )
