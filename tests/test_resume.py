"""Resume, re-run, lineage, parameter diffs, time travel and upcasting."""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import (
    InvalidRerun,
    ParamDiff,
    Resumer,
    Run,
    RunNotRerunnable,
    RunNotResumable,
    RunState,
    RunStore,
    diff_params,
    register_upcaster,
)
from faber_runlog._base import codec as _codec
from faber_runlog._domain.events import register_event_type
from faber_runlog._domain.state import fold_all, register_fold
from faber_runlog._format.layout import RunLayout
from faber_runlog._log.lease import Lease, lease_key
from faber_runlog._services.resume import merge_params

# Application tests: the storage and log contract is pinned on every backend elsewhere.
pytestmark = pytest.mark.backends("memory")

WORKERS = Path(__file__).with_name("_resume_workers.py")
WORKFLOW = [("frame", ["fetch", "plan"]), ("build", ["compile", "test", "package"]), ("release", ["ship"])]


def play(
    run: Run, fail: tuple[str, str] | None = None, stop: tuple[str, str] | None = None, *, ended: bool = False
) -> None:
    """Run WORKFLOW's events until ``fail`` (a step_error) or ``stop`` (left running), else to completion.

    A step error leaves the run ``failing`` (resumable, not ended); with ``ended`` a ``workflow_error``
    then ends it as ``failed``, as a workflow that gives up does (only ended runs are re-run or archived).
    """
    log = run.log
    log.emit("workflow_start")
    for phase, steps in WORKFLOW:
        log.emit("phase_start", phase=phase)
        for step in steps:
            log.emit("step_start", phase=phase, step=step)
            if (phase, step) == stop:
                return
            if (phase, step) == fail:
                log.emit("step_error", phase=phase, step=step, error=f"{step} exit 2")
                if ended:
                    log.emit("workflow_error", error=f"{step} exit 2")
                return
            log.emit("step_complete", phase=phase, step=step)
        log.emit("phase_complete", phase=phase)
    log.emit("workflow_complete")


def write_lease(store: RunStore, run: Run, minutes: float, owner: str = "worker-1") -> None:
    now = _dt.datetime.now(_dt.UTC)
    lease = Lease(
        owner=owner,
        acquired_at=now.isoformat(),
        heartbeat_at=now.isoformat(),
        expires_at=(now + _dt.timedelta(minutes=minutes)).isoformat(),
        host="box",
        pid=4242,
    )
    store.storage.replace(lease_key(run.run_id), _codec.dumps(lease.to_dict()))


# -- plan --------------------------------------------------------------------------


def _run_with_status(store: RunStore, status: str) -> Run:
    run = store.create_run("acme", "web")
    if status == "created":
        return run
    if status in ("running", "paused", "awaiting_approval"):
        play(run, stop=("build", "compile"))
        if status == "paused":
            run.log.emit("workflow_paused", metadata={"paused_from": "running"})
        elif status == "awaiting_approval":
            run.log.emit("approval_requested", metadata={"approval_id": "a1", "gate": "review"})
    elif status == "failing":
        play(run, fail=("build", "test"))
    elif status == "failed":
        play(run, fail=("build", "test"), ended=True)
    elif status == "completed":
        play(run)
    elif status == "cancelled":
        play(run, stop=("build", "compile"))
        run.log.emit("workflow_cancelled")
    return run


@pytest.mark.parametrize(
    ("status", "resumable"),
    [
        ("created", True),
        ("running", True),
        ("paused", True),
        ("awaiting_approval", False),
        ("failing", True),
        ("failed", True),
        ("completed", False),
        ("cancelled", False),
    ],
)
def test_plan_for_every_run_status(store: RunStore, status: str, resumable: bool) -> None:
    run = _run_with_status(store, status)
    plan = Resumer(store).plan(run.id)
    assert (status, resumable) == (plan.status, plan.resumable)
    assert (plan.reason is None) == resumable
    assert run.state().last_event_id == plan.last_event_id


def test_cancelled_run_is_resumable_only_when_allowed(store: RunStore) -> None:
    run = _run_with_status(store, "cancelled")
    r = Resumer(store)
    plan = r.plan(run.id)
    assert ("it was cancelled", ("allow_cancelled",)) == (plan.reason, plan.error_for_refusal().advice)
    assert "pass allow_cancelled=True" in str(plan.error_for_refusal())
    assert r.plan(run.id, allow_cancelled=True).resumable
    resumed = r.resume(run.id, allow_cancelled=True)
    assert ("running", 1) == (resumed.state().status, resumed.state().resume_count)


def test_archived_run_is_not_resumable(store: RunStore) -> None:
    run = _run_with_status(store, "failed")
    store.storage.replace(f"{RunLayout(run.run_id).dir}/archived.json", b"{}")
    plan = Resumer(store).plan(run.id)
    assert (False, True) == (plan.resumable, "archived" in (plan.reason or ""))


def test_live_lease_blocks_resume_but_expired_or_own_lease_does_not(store: RunStore) -> None:
    run = _run_with_status(store, "running")
    r = Resumer(store)
    write_lease(store, run, minutes=5)
    plan = r.plan(run.id)
    assert not plan.resumable
    assert "worker-1" in (plan.reason or "") and "box" in (plan.reason or "")
    assert r.plan(run.id, owner="worker-1").resumable
    write_lease(store, run, minutes=-1)
    assert r.plan(run.id).resumable


def test_refused_resume_names_run_status_and_last_event_and_writes_nothing(store: RunStore) -> None:
    run = _run_with_status(store, "completed")
    last = run.state().last_event_id
    with pytest.raises(RunNotResumable) as info:
        Resumer(store).resume(run.id)
    err = info.value
    assert (run.id, "completed", last, "workflow_complete") == (
        err.run_id,
        err.status,
        err.last_event_id,
        err.last_event_type,
    )
    assert run.id in str(err) and "Resumer(store).rerun(" in str(err) and f"event {last}" in str(err)
    assert isinstance(err, RuntimeError)
    assert last == store.get_run(run.id).state().last_event_id


def test_resume_after_failure_in_phase_two_of_three_skips_exactly_the_completed_steps(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    play(run, fail=("build", "test"))
    r = Resumer(store)
    plan = r.plan(run.id)
    assert (True, "build", "test") == (plan.resumable, plan.resume_phase, plan.resume_step)
    assert (("frame", "fetch"), ("frame", "plan"), ("build", "compile")) == plan.skip
    assert (("frame",), ()) == (plan.completed_phases, plan.skipped_phases)
    assert ("build", "test", "test exit 2") == (plan.failed_phase, plan.failed_step, plan.error)
    ran = [(p, s) for p, steps in WORKFLOW for s in steps if plan.should_run(p, s)]
    assert [("build", "test"), ("build", "package"), ("release", "ship")] == ran
    assert (False, True, True) == (plan.should_run("frame"), plan.should_run("build"), plan.should_run("release"))

    resumed, again, event = r.resume_with_plan(run.id)
    assert (run.id, plan) == (resumed.id, again)
    assert ("workflow_resumed", plan.last_event_id + 1) == (event.type, event.event_id)
    assert {
        "resume_phase": "build",
        "resume_step": "test",
        "skip": [["frame", "fetch"], ["frame", "plan"], ["build", "compile"]],
        "previous_status": "failing",  # a step failed; the run had not ended
    } == event.metadata
    state = store.get_run(run.id).state()
    assert ("running", 1) == (state.status, state.resume_count)


def test_skipped_phases_stay_skipped(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_skip", phase="frame")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="boom")
    plan = Resumer(store).plan(run.id)
    assert (("frame",), ("build", "compile")) == (plan.skipped_phases, (plan.resume_phase, plan.resume_step))
    assert (False, False, True) == (
        plan.should_run("frame"),
        plan.should_run("frame", "fetch"),
        plan.should_run("build", "compile"),
    )


def test_retried_and_completed_step_is_skipped(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="flaky")
    run.log.emit("step_retry", phase="build", step="compile")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.log.emit("step_start", phase="build", step="test")
    run.log.emit("step_error", phase="build", step="test", error="red")
    plan = Resumer(store).plan(run.id)
    assert ((("build", "compile"),), "test") == (plan.skip, plan.resume_step)


def test_plan_to_dict_is_plain_json(store: RunStore) -> None:
    run = _run_with_status(store, "failed")
    data = Resumer(store).plan(run.id).to_dict()
    assert data == json.loads(json.dumps(data))
    assert ["frame", "fetch"] == data["skip"][0]


# -- re-run --------------------------------------------------------------------------


def test_rerun_chain_of_depth_three_links_root_parent_children_and_diffs(store: RunStore) -> None:
    r = Resumer(store)
    root = store.create_run("acme", "web", {"work_id": "220", "build": {"target": "x86", "opt": 2}, "old": 1})
    play(root, fail=("build", "test"), ended=True)
    c1 = r.rerun(root.id, params={"work_id": "221", "old": None, "build": {"opt": 3}})
    play(c1)
    c2 = r.rerun(c1.id, params={"build": {"target": None, "flags": ["-g"]}, "new": True})
    play(c2)
    c3 = r.rerun(c2.id)

    assert {"work_id": "221", "build": {"target": "x86", "opt": 3}} == store.get_run(c1.id).metadata.params
    assert {"work_id": "221", "build": {"opt": 3, "flags": ["-g"]}, "new": True} == c3.metadata.params
    for child, parent in ((c1, root), (c2, c1), (c3, c2)):
        meta = store.get_run(child.id).metadata
        assert (parent.id, root.id) == (meta.parent_run_id, meta.root_run_id)
        assert [child.id] == store.children(parent.id)
        first = next(iter(store.get_run(child.id).log.read()))
        assert ("workflow_rerun", 1) == (first.type, first.event_id)
        assert (parent.id, root.id, "all") == (
            first.metadata["parent_run_id"],
            first.metadata["root_run_id"],
            first.metadata["mode"],
        )
        assert r.diff(parent.id, child.id).to_dict() == first.metadata["diff"]
    assert ParamDiff(added={}, removed={"old": 1}, changed={"work_id": ("220", "221"), "build.opt": (2, 3)}) == r.diff(
        root.id, c1.id
    )
    assert ParamDiff(added={"build.flags": ["-g"], "new": True}, removed={"build.target": "x86"}, changed={}) == r.diff(
        c1.id, c2.id
    )
    assert not r.diff(c2.id, c3.id)

    down = store.lineage(root.id)
    assert (root.id, None, (), (c1.id,), (c1.id, c2.id, c3.id)) == (
        down.root_run_id,
        down.parent_run_id,
        down.ancestors,
        down.children,
        down.descendants,
    )
    up = store.lineage(c3.id)
    assert (root.id, c2.id, (c2.id, c1.id, root.id), ()) == (
        up.root_run_id,
        up.parent_run_id,
        up.ancestors,
        up.descendants,
    )
    mid = store.lineage(c2.id)
    assert ((c1.id, root.id), (c3.id,)) == (mid.ancestors, mid.descendants)


def test_rerun_from_failure_skips_what_the_parent_completed(store: RunStore) -> None:
    parent = store.create_run("acme", "web", {"work_id": "220"})
    play(parent, fail=("build", "test"), ended=True)
    r = Resumer(store)
    child = r.rerun(parent.id, mode="from_failure")
    plan = r.plan(child.id)
    assert (True, "build", "test") == (plan.resumable, plan.resume_phase, plan.resume_step)
    assert (("frame", "fetch"), ("frame", "plan"), ("build", "compile")) == plan.skip
    assert (parent.id, "from_failure") == (plan.parent_run_id, plan.rerun_mode)
    # The child's own progress overrides what it inherited.
    child.log.emit("workflow_start")
    child.log.emit("step_start", phase="build", step="test")
    child.log.emit("step_complete", phase="build", step="test")
    plan = r.plan(child.id)
    # "package" never ran in either run: the plan names the phase, should_run names the steps.
    assert ("build", None) == (plan.resume_phase, plan.resume_step)
    assert (False, True) == (plan.should_run("build", "test"), plan.should_run("build", "package"))


def test_rerun_from_event_starts_from_the_parents_state_after_that_event(store: RunStore) -> None:
    parent = store.create_run("acme", "web")
    play(parent, fail=("build", "test"), ended=True)
    events = list(parent.log.read())
    n = next(e.event_id for e in events if (e.type, e.step) == ("step_complete", "compile"))
    r = Resumer(store)
    child = r.rerun(parent.id, from_event=n)
    at_n = store.get_run(parent.id).state(at=n)
    assert fold_all(RunState(run_id=parent.id), events[:n]) == at_n
    first = next(iter(child.log.read()))
    assert ("from_event", n) == (first.metadata["mode"], first.metadata["from_event"])
    assert ("from_event", n, parent.id) == (
        child.metadata.lineage["mode"],
        child.metadata.lineage["from_event"],
        child.metadata.lineage["base"]["run_id"],
    )
    plan = r.plan(child.id)
    assert ("build", None) == (plan.resume_phase, plan.resume_step)
    assert (("frame", "fetch"), ("frame", "plan"), ("build", "compile")) == plan.skip
    assert plan.should_run("build", "test")


def test_rerun_into_another_project_with_tags(store: RunStore) -> None:
    parent = store.create_run("acme", "web", {"a": 1}, tags={"team": "core", "tmp": "x"})
    play(parent)
    child = Resumer(store).rerun(parent.id, project="api", tags={"tmp": None, "try": "2"})
    assert ("acme", "api") == (child.run_id.org, child.run_id.project)
    assert {"team": "core", "try": "2"} == child.metadata.tags
    assert [child.id] == store.children(parent.id)


@pytest.mark.parametrize(
    "kwargs",
    [{"from_event": 0}, {"from_event": 999}, {"from_event": True}, {"mode": "partial"},
     {"mode": "from_event"}, {"mode": "from_failure", "from_event": 2}],
)  # fmt: skip  # a table: one case per row
def test_bad_rerun_arguments_are_refused_and_create_nothing(store: RunStore, kwargs: dict[str, Any]) -> None:
    parent = store.create_run("acme", "web")
    play(parent)
    with pytest.raises(InvalidRerun, match=parent.id):
        Resumer(store).rerun(parent.id, **kwargs)
    assert [parent.id] == [s.run_id for s in store.list_runs()]
    assert [] == store.children(parent.id)


def test_unfinished_run_cannot_be_rerun(store: RunStore) -> None:
    parent = _run_with_status(store, "running")
    with pytest.raises(RunNotRerunnable, match="'running'") as info:
        Resumer(store).rerun(parent.id)
    assert (parent.id, "running") == (info.value.run_id, info.value.status)
    assert 1 == len(store.list_runs())


def test_children_skips_records_of_runs_that_were_never_created(store: RunStore) -> None:
    parent = store.create_run("acme", "web")
    play(parent)
    child = Resumer(store).rerun(parent.id)
    folder = RunLayout(parent.run_id).children
    ghost = "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55"
    store.storage.replace(
        f"{folder}/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55.json", _codec.dumps({"run_id": ghost, "created_at": "x"})
    )
    store.storage.replace(f"{folder}/junk.json", b"not json")
    assert [child.id] == store.children(parent.id)


# -- parameters ---------------------------------------------------------------------


def test_diff_params_reports_nested_added_removed_and_changed_by_path() -> None:
    old = {"a": 1, "n": {"x": 1, "y": {"z": "keep", "w": 0}}, "gone": [1], "t": 1}
    new = {"a": 2, "n": {"x": 1, "y": {"z": "keep", "v": 5}}, "fresh": None, "t": 1.0}
    assert ParamDiff(
        added={"n.y.v": 5, "fresh": None},
        removed={"n.y.w": 0, "gone": [1]},
        changed={"a": (1, 2), "t": (1, 1.0)},
    ) == diff_params(old, new)
    assert not diff_params(old, old)


def test_merge_params_merges_nested_dicts_and_none_removes() -> None:
    base = {"a": 1, "n": {"x": 1, "y": 2}, "l": [1]}
    assert {"n": {"y": 2, "z": 3}, "l": [2], "b": {"c": 1}} == merge_params(
        base, {"a": None, "n": {"x": None, "z": 3}, "l": [2], "b": {"c": 1}}
    )
    assert {"a": 1, "n": {"x": 1, "y": 2}, "l": [1]} == base


# -- time travel and upcasting -------------------------------------------------------------


def test_state_at_every_event_equals_folding_that_prefix(store_factory: Any) -> None:
    store = store_factory(snapshot_every=4)
    run = store.create_run("acme", "web")
    play(run, fail=("build", "package"))
    events = list(run.log.read())
    fresh = store.get_run(run.id)
    for n in range(1, len(events) + 1):
        assert fold_all(RunState(run_id=run.id), events[:n]) == fresh.state(at=n)


register_event_type(
    "resume_test_note",
    {"type": "object", "properties": {"metadata": {"required": ["text"]}}},
    version=2,
    replace=True,
)
register_upcaster(
    "resume_test_note",
    1,
    lambda d: {**d, "metadata": {"text": d["metadata"].pop("body")}, "schema_version": 2},
)


def _note(state: RunState, event: Any) -> None:
    state.checkpoints.append({"event_id": event.event_id, "label": event.metadata["text"]})


register_fold("resume_test_note", _note, replace=True)
# A built-in type as an older release wrote it: the error sat in metadata["reason"].
register_upcaster(
    "step_error",
    0,
    lambda d: {**d, "error": d["metadata"].pop("reason"), "schema_version": 1},
)


def _write_raw(store: RunStore, run: Run, seq: int, data: dict[str, Any]) -> bytes:
    body = _codec.dumps({"event_id": seq, "run_id": run.id, "timestamp": "2024-01-01T00:00:00Z", **data})
    assert store.storage.create(RunLayout(run.run_id).event(seq), body)
    return body


def test_old_version_events_still_fold_after_upcasting_and_files_are_unchanged(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    old_error = _write_raw(
        store,
        run,
        3,
        {
            "type": "step_error",
            "phase": "build",
            "step": "compile",
            "schema_version": 0,
            "metadata": {"reason": "exit 2"},
        },
    )
    old_note = _write_raw(
        store, run, 4, {"type": "resume_test_note", "schema_version": 1, "metadata": {"body": "hello"}}
    )
    state = store.get_run(run.id).state()
    assert ("failing", "exit 2") == (state.status, state.step("build", "compile").error)  # type: ignore[union-attr]
    assert [{"event_id": 4, "label": "hello"}] == state.checkpoints
    lifted = list(run.log.read(since=2))
    assert [(1, "exit 2"), (2, {"text": "hello"})] == [
        (lifted[0].schema_version, lifted[0].error),
        (lifted[1].schema_version, lifted[1].metadata),
    ]
    assert (old_error, old_note) == (
        store.storage.read(RunLayout(run.run_id).event(3)),
        store.storage.read(RunLayout(run.run_id).event(4)),
    )
    assert Resumer(store).verify(run.id).ok
    assert ("build", "compile") == (Resumer(store).plan(run.id).resume_phase, Resumer(store).plan(run.id).resume_step)


# -- real processes -------------------------------------------------------------------------


def _race(spec: dict[str, Any], tmp_path: Path, command: str, run_id: str, args: list[list[str]]) -> list[Any]:
    go = tmp_path / f"go-{command}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), command, json.dumps(spec), str(go), run_id, *a],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert 0 == p.returncode, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _open(spec: dict[str, Any]) -> RunStore:
    return RunStore(spec["url"], storage_options=spec["storage_options"] or None)


def test_concurrent_resumes_append_exactly_one_workflow_resumed(
    shared_store_spec: dict[str, Any], tmp_path: Path
) -> None:
    store = _open(shared_store_spec)
    run = store.create_run("acme", "web")
    play(run, fail=("build", "test"))
    last = run.state().last_event_id
    got = _race(shared_store_spec, tmp_path, "resume", run.id, [[] for _ in range(4)])
    assert [{"event_id": last + 1, "type": "workflow_resumed"}] * 4 == got
    events = list(store.get_run(run.id).log.read())
    assert [last + 1] == [e.event_id for e in events if e.type == "workflow_resumed"]
    assert (last + 1, 1) == (events[-1].event_id, store.get_run(run.id).state().resume_count)


@pytest.mark.slow
def test_processes_racing_with_one_idempotency_key_append_one_event(
    shared_store_spec: dict[str, Any], tmp_path: Path, soak: bool
) -> None:
    procs = 8 if soak else 4
    store = _open(shared_store_spec)
    run = store.create_run("acme", "web")
    play(run, stop=("build", "compile"))
    last = run.state().last_event_id
    got = _race(shared_store_spec, tmp_path, "emit_key", run.id, [["compile-done"] for _ in range(procs)])
    assert [{"event_id": last + 1, "type": "step_complete"}] * procs == got
    events = list(store.get_run(run.id).log.read(since=last))
    assert [(last + 1, "compile-done")] == [(e.event_id, e.idempotency_key) for e in events]


def test_concurrent_reruns_of_one_parent_are_all_listed(shared_store_spec: dict[str, Any], tmp_path: Path) -> None:
    store = _open(shared_store_spec)
    parent = store.create_run("acme", "web", {"worker": "none"})
    play(parent, fail=("frame", "plan"), ended=True)
    got = _race(shared_store_spec, tmp_path, "rerun", parent.id, [[f"w{i}"] for i in range(4)])
    children = sorted(g["child"] for g in got)
    assert children == sorted(store.children(parent.id))
    assert sorted(f"w{i}" for i in range(4)) == sorted(store.get_run(c).metadata.params["worker"] for c in children)
    assert tuple(store.children(parent.id)) == store.lineage(parent.id).descendants


def test_docs_page_examples_run() -> None:
    import re

    page = Path(__file__).resolve().parent.parent / "docs" / "resume-and-rerun.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
    exec(compile(code, str(page), "exec"), {})
