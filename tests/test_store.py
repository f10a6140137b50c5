from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from faber_runlog import InvalidRunId, RunExists, RunMetadata, RunNotFound, RunStore
from faber_runlog._base import codec as _codec
from faber_runlog._format.layout import RunLayout, decode_summary, encode_summary
from faber_runlog._log.index import INDEX_DIR
from faber_runlog._services.store import DEFAULT_ROOT


def test_create_run_writes_metadata_and_initial_state(store: RunStore) -> None:
    run = store.create_run("acme", "web", params={"work_id": "220", "n": [1, 2]}, tags={"team": "core"})
    assert run.id.startswith("acme/web/")
    meta = store.get_run(run.id).metadata
    assert ({"work_id": "220", "n": [1, 2]}, {"team": "core"}) == (meta.params, meta.tags)
    assert meta.params_hash.startswith("sha256:")
    assert {"host", "user", "python"} <= set(meta.environment)
    assert ("created", 0) == (run.state().status, run.state().last_event_id)


def test_issue_example_end_to_end(store: RunStore) -> None:
    run = store.create_run("acme", "web", params={"work_id": "220"}, tags={"team": "core"})
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", metadata={"error": "exit 2"})
    assert "failing" == run.state().status  # a failed step: the run can still retry, resume or fail
    assert run.state() == store.get_run(run.id).state()
    assert [run.id] == [s.run_id for s in store.list_runs(org="acme", project="web", status="failing")]
    assert [] == store.list_runs(org="acme", project="web", status="failed")
    run.fail("exit 2")
    assert ("failed", run.state()) == (run.state().status, store.get_run(run.id).state())
    assert [run.id] == [s.run_id for s in store.list_runs(org="acme", project="web", status="failed")]


def test_same_params_give_same_hash(store: RunStore) -> None:
    a = store.create_run("acme", "web", params={"a": 1, "b": 2})
    b = store.create_run("acme", "web", params={"b": 2, "a": 1})
    assert a.metadata.params_hash == b.metadata.params_hash


def test_get_missing_run_raises_lookup_error_naming_the_id(store: RunStore) -> None:
    rid = "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55"
    with pytest.raises(RunNotFound, match=rid) as info:
        store.get_run(rid)
    assert isinstance(info.value, LookupError)
    assert rid == info.value.run_id


def test_creating_an_existing_id_fails_and_keeps_the_run(store: RunStore) -> None:
    run = store.create_run("acme", "web", params={"keep": True})
    run.log.emit("workflow_start")
    with pytest.raises(RunExists):
        store.create_run("acme", "web", params={"keep": False}, run_id=run.id)
    assert {"keep": True} == store.get_run(run.id).metadata.params
    assert 1 == store.get_run(run.id).state().last_event_id


@pytest.mark.parametrize(("org", "project"), [("../x", "web"), ("acme", "a/b"), ("", "web"), ("ACME", "web")])
def test_bad_slugs_are_refused_and_nothing_is_written(store: RunStore, org: str, project: str) -> None:
    with pytest.raises(InvalidRunId):
        store.create_run(org, project)
    assert [] == store.list_runs()


@pytest.mark.parametrize("params", [{"x": float("nan")}, {"x": {1: 2}}, {"x": object()}, ["not", "a", "map"]])
def test_bad_params_are_refused(store: RunStore, params: object) -> None:
    with pytest.raises(ValueError):
        store.create_run("acme", "web", params=params)  # type: ignore[arg-type]
    assert [] == store.list_runs()


def test_list_runs_filters_by_org_project_status_and_tags(store: RunStore) -> None:
    a = store.create_run("acme", "web", tags={"team": "core"})
    b = store.create_run("acme", "api")
    c = store.create_run("other", "web")
    a.log.emit("workflow_start")
    a.log.emit("workflow_complete")
    b.log.emit("workflow_start")
    assert {a.id, b.id, c.id} == {s.run_id for s in store.list_runs()}
    assert {a.id, b.id} == {s.run_id for s in store.list_runs(org="acme")}
    assert [b.id] == [s.run_id for s in store.list_runs(org="acme", project="api")]
    assert [a.id] == [s.run_id for s in store.list_runs(status="completed")]
    assert [c.id] == [s.run_id for s in store.list_runs(status="created")]
    assert [a.id] == [s.run_id for s in store.list_runs(tags={"team": "core"})]
    assert [] == store.list_runs(org="nobody")


def test_list_runs_never_reads_events(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("checkpoint", metadata={"label": "a"})
    run.log.emit("checkpoint", metadata={"label": "b"})
    run.complete()  # a status change: the summary now follows event 4
    # Damage every event: listing must not notice, because it reads the summary and probes only event 5
    # (finding damage is verify's job).
    for seq in (1, 2, 3, 4):
        store.storage.replace(f"{run.id}/events/{seq:020d}.json", b"{broken")
    listed = store.list_runs()
    assert (["completed"], []) == ([s.status for s in listed], listed.problems)
    # The run index answers for an ended run from its row, reading nothing of the run; without the index
    # (a project from before it) the listing reads the summary, and without a summary the run is folded
    # from its log: then the damage is reported, not hidden.
    store.storage.delete(f"{run.id}/summary.json")
    assert ["completed"] == [s.status for s in store.list_runs()]
    store.storage.fs.rm(store.storage.path(INDEX_DIR), recursive=True)
    listed = store.list_runs()
    assert ([], [run.id]) == (list(listed), [p.run_id for p in listed.problems])


def _keys_read(store: RunStore) -> list[str]:
    """Record every key the store's batched reads fetch from now on (instrumentation, not a stand-in)."""
    keys: list[str] = []
    read_many = store.storage.read_many

    def recorded(wanted: Any) -> dict[str, bytes | None]:
        got = read_many(list(wanted))
        keys.extend(got)
        return got

    store.storage.read_many = recorded  # type: ignore[method-assign,assignment]
    return keys


def test_list_runs_reads_the_metadata_a_listing_shows_from_the_summary(store: RunStore) -> None:
    parent = store.create_run("acme", "web")
    run = store.create_run("acme", "web", params={"work_id": "7"}, tags={"team": "core"}, parent_run_id=parent.id)
    run.start()
    run.complete()
    keys = _keys_read(store)
    [listed] = store.list_runs(tags={"team": "core"})
    expected = (run.id, {"work_id": "7"}, {"team": "core"}, parent.id, run.metadata.created_at, "completed")
    assert expected == (
        listed.run_id,
        listed.params,
        listed.tags,
        listed.parent_run_id,
        listed.created_at,
        listed.status,
    )
    # the index drops the run the tags exclude and answers for the ended one from its row: nothing of a run is read
    assert [] == [k for k in keys if k.endswith(("metadata.json", "summary.json"))]
    # without the index (a project from before it): one summary per listed run, never metadata.json
    store.storage.fs.rm(store.storage.path(INDEX_DIR), recursive=True)
    keys.clear()
    [listed] = store.list_runs(tags={"team": "core"})
    assert expected[:5] == (listed.run_id, listed.params, listed.tags, listed.parent_run_id, listed.created_at)
    assert ([], 2) == ([k for k in keys if k.endswith("metadata.json")], len([k for k in keys if "summary" in k]))


def test_a_summary_carries_no_metadata_that_is_too_large_and_the_listing_reads_it(store: RunStore) -> None:
    params = {"blob": "x" * 2000}
    run = store.create_run("acme", "web", params=params)
    run.start()
    assert None is decode_summary(store.storage.read(RunLayout(run.run_id).summary) or b"").get("listing")
    keys = _keys_read(store)
    assert [params] == [r.params for r in store.list_runs()]
    assert [RunLayout(run.run_id).metadata] == [k for k in keys if k.endswith("metadata.json")]


def test_list_runs_reads_metadata_when_a_summary_does_not_carry_it(store: RunStore) -> None:
    run = store.create_run("acme", "web", params={"work_id": "7"}, tags={"team": "core"})
    run.start()
    key = RunLayout(run.run_id).summary
    body = decode_summary(store.storage.read(key) or b"")
    for listing in (None, {"created_at": 1, "params": [], "tags": "x"}):  # absent (an older writer), or not one
        store.storage.replace(key, encode_summary({**body, "listing": listing}))
        [listed] = store.list_runs()
        assert ({"work_id": "7"}, {"team": "core"}, "running") == (listed.params, listed.tags, listed.status)


def test_list_runs_ignores_stray_entries(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    store.storage.replace("acme/web/not-a-run/file.txt", b"x")
    store.storage.replace("README.txt", b"x")
    assert [run.id] == [s.run_id for s in store.list_runs()]


def test_default_root_is_the_faber_folder_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FABER_RUNLOG_ROOT", raising=False)
    run = RunStore().create_run("acme", "web")
    assert (tmp_path / DEFAULT_ROOT / run.id / "metadata.json").is_file()


def test_env_var_overrides_the_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABER_RUNLOG_ROOT", str(tmp_path / "elsewhere"))
    run = RunStore().create_run("acme", "web")
    assert (tmp_path / "elsewhere" / run.id / "state.json").is_file()


def test_store_from_fs_and_root(tmp_path: Path) -> None:
    import fsspec

    store = RunStore(fs=fsspec.filesystem("file"), root=str(tmp_path / "r"))
    run = store.create_run("acme", "web")
    assert os.path.isdir(tmp_path / "r" / run.id / "events")


def test_fs_without_root_is_refused() -> None:
    import fsspec

    with pytest.raises(ValueError, match="root="):
        RunStore(fs=fsspec.filesystem("memory"))


def test_local_layout_matches_the_documented_one(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path))
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    folder = tmp_path / run.id
    assert ["events", "metadata.json", "state.json", "summary.json"] == sorted(os.listdir(folder))
    assert [f"{1:020d}.json"] == os.listdir(folder / "events")


# -- the summary cache (summary.json) ------------------------------------------------------


def _listed(store: RunStore) -> list[tuple[str, int, str | None]]:
    return [(s.status, s.last_event_id, s.current_step) for s in store.list_runs()]


def _truth(store: RunStore, run_id: str) -> list[tuple[str, int, str | None]]:
    state = store.get_run(run_id).state()
    return [(state.status, state.last_event_id, state.current_step)]


def test_list_runs_is_right_when_the_summary_lags_behind_neutral_events(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()  # a status change: the summary follows event 1
    key = RunLayout(run.run_id).summary
    behind = store.storage.read(key)
    assert behind is not None
    run.log.emit("step_start", phase="build", step="compile")
    # On S3 a status-neutral event leaves the summary behind; where writes are cheap a crash can.
    store.storage.replace(key, behind)
    summary = decode_summary(store.storage.read(key) or b"")
    assert 1 == summary["last_event_id"]
    assert [("running", 2, "compile")] == _listed(store) == _truth(store, run.id)


@pytest.mark.rule("protocol", 11)
def test_list_runs_is_right_when_a_writer_died_before_writing_the_summary(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    # The event a writer claimed right before it was killed: on disk, but no summary follows it.
    done = {
        "event_id": 2,
        "type": "workflow_complete",
        "timestamp": _codec.now_iso(),
        "run_id": run.id,
        "metadata": {},
        "schema_version": 1,
        "nonce": "dead-1",
    }
    assert store.storage.create(RunLayout(run.run_id).event(2), _codec.dumps(done))
    assert [("completed", 2, None)] == _listed(store) == _truth(store, run.id)


def test_list_runs_ignores_a_damaged_summary(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.complete()
    key = RunLayout(run.run_id).summary
    edited = (store.storage.read(key) or b"").replace(b'"completed"', b'"running"')  # its checksum fails
    for damaged in (edited, b"{not json", b"", encode_summary({"run_id": run.id})):
        store.storage.replace(key, damaged)
        assert [("completed", 2, None)] == _listed(store) == _truth(store, run.id)


def test_list_runs_ignores_a_summary_of_another_run(store: RunStore) -> None:
    first, second = store.create_run("acme", "web"), store.create_run("acme", "web")
    first.start()
    first.complete()
    second.start()
    # A summary copied from another run (intact, checksum and all) is not this run's.
    store.storage.replace(RunLayout(second.run_id).summary, store.storage.read(RunLayout(first.run_id).summary) or b"")
    listed = {s.run_id: s.status for s in store.list_runs()}
    assert {first.id: "completed", second.id: "running"} == listed


def test_list_runs_is_right_without_any_summary(store: RunStore) -> None:
    runs = [store.create_run("acme", "web") for _ in range(3)]
    runs[0].start()
    runs[1].start()
    runs[1].fail("boom")
    for run in runs:
        store.storage.delete(RunLayout(run.run_id).summary)
    listed = {s.run_id: s.status for s in store.list_runs()}
    assert {runs[0].id: "running", runs[1].id: "failed", runs[2].id: "created"} == listed


def test_the_summary_follows_every_status_change_and_snapshot(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    key = RunLayout(run.run_id).summary
    assert ("created", 0) == _summary(store, key)
    run.start()
    run.log.emit("step_start", phase="build", step="test")
    run.log.emit("step_error", phase="build", step="test", error="exit 2")  # running -> failing
    assert ("failing", 3) == _summary(store, key)
    run.log.emit("checkpoint", metadata={"label": "x"})
    run.log.snapshot()  # on demand: state.json and the summary
    body = decode_summary(store.storage.read(key) or b"")
    assert ("failing", 4, "build", "test", "exit 2") == (
        body["status"],
        body["last_event_id"],
        body["failed_phase"],
        body["failed_step"],
        body["error"],
    )
    assert len(store.storage.read(key) or b"") < 2048


def _summary(store: RunStore, key: str) -> tuple[str, int]:
    body = decode_summary(store.storage.read(key) or b"")
    return body["status"], body["last_event_id"]


def test_create_run_from_takes_the_given_id_and_time_and_the_stores_seal_grace(store: RunStore) -> None:
    meta = RunMetadata(
        org="acme", project="web", uuid="0b6f5d1a-2c3e-4f50-9a61-7b8c9d0e1f20", created_at="2026-01-02T03:04:05.000000Z"
    )
    run = store.create_run_from(meta)
    got = store.get_run(run.id).metadata
    assert ("acme/web/0b6f5d1a-2c3e-4f50-9a61-7b8c9d0e1f20", meta.created_at, store.seal_grace) == (
        run.id,
        got.created_at,
        got.seal_grace,
    )
    with pytest.raises(RunExists):  # other bytes (the same bytes again are a retried create of this run)
        store.create_run_from(attrs.evolve(meta, params={"other": 1}))
