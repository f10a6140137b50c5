"""FABER compatibility: import FABER run folders, the workflow plan, export back to FABER's format.

The tests write FABER folders themselves, in the layout FABER's run-manager
scripts produce: ``metadata.json``, ``state.json`` (status left ``pending``),
``events/.next-id`` and ``events/NNN-{type}.json`` numbered with ``printf %03d``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from conftest import make_store

from faber_runlog import Event, Resumer, RunStore, export_faber, import_faber
from faber_runlog._faber.convert import IMPORT_KEY, UNMAPPED_TYPE, faber_event, mapped_run_id
from faber_runlog._frontends.cli import main
from faber_runlog.errors import InvalidParams

BASE = ".fractary/faber/runs"
OLD_BASE = ".fractary/plugins/faber/runs"
RUN = "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55"
PARENT = "acme/web/0b6f5d1a-2c3e-4f50-9a61-7b8c9d0e1f20"
PHASES = ["frame", "architect", "build", "evaluate", "release"]

# FABER's published event schema (plugins/faber/schemas/event.schema.json in github.com/fractary/faber,
# Apache-2.0), reduced to its constraints (descriptions dropped) to check exported events against it.
FABER_EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["event_id", "type", "timestamp", "run_id"],
    "properties": {
        "event_id": {"type": "integer", "minimum": 1},
        "type": {"type": "string", "enum": [
            "workflow_start", "workflow_complete", "workflow_error", "workflow_cancelled", "workflow_resumed",
            "workflow_rerun", "phase_start", "phase_skip", "phase_complete", "phase_error", "step_start",
            "step_complete", "step_error", "step_retry", "artifact_create", "artifact_modify", "commit_create",
            "branch_create", "pr_create", "pr_merge", "spec_generate", "spec_validate", "test_run", "docs_update",
            "checkpoint", "skill_invoke", "agent_invoke", "decision_point", "retry_loop_enter", "retry_loop_exit",
            "approval_request", "approval_granted", "approval_denied", "hook_execute"]},
        "timestamp": {"type": "string", "format": "date-time"},
        "run_id": {"type": "string", "pattern": "^[a-z0-9_-]+/[a-z0-9_-]+/[a-f0-9-]{36}$"},
        "phase": {"type": "string", "enum": ["frame", "architect", "build", "evaluate", "release", None]},
        "step": {"type": "string"},
        "status": {"type": "string", "enum": ["started", "completed", "failed", "skipped", "pending", "cancelled"]},
        "user": {"type": "string"},
        "source": {"type": "string"},
        "message": {"type": "string"},
        "duration_ms": {"type": "integer", "minimum": 0},
        "metadata": {"type": "object", "additionalProperties": True},
        "artifacts": {"type": "array", "items": {"$ref": "#/definitions/artifact"}},
        "error": {"$ref": "#/definitions/error"},
    },
    "definitions": {
        "artifact": {"type": "object", "required": ["type", "name"], "properties": {
            "type": {"type": "string", "enum": ["branch", "commit", "spec", "pr", "deployment", "tag", "document",
                                                "file", "other"]},
            "name": {"type": "string"}, "path": {"type": "string"}, "url": {"type": "string", "format": "uri"},
            "sha": {"type": "string"}, "size_bytes": {"type": "integer"}}},
        "error": {"type": "object", "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "stack": {"type": "string"},
            "recoverable": {"type": "boolean"}}},
    },
    "allOf": [
        {"if": {"properties": {"type": {"const": "workflow_start"}}}, "then": {"properties": {"metadata": {
            "type": "object", "properties": {
                "work_id": {"type": "string"}, "target": {"type": "string"}, "workflow_id": {"type": "string"},
                "autonomy": {"type": "string"}, "phases": {"type": "array", "items": {"type": "string"}}}}}}},
        {"if": {"properties": {"type": {"const": "phase_start"}}}, "then": {"required": ["phase"], "properties": {
            "metadata": {"type": "object", "properties": {
                "steps": {"type": "array", "items": {"type": "string"}},
                "hooks": {"type": "array", "items": {"type": "string"}}}}}}},
        {"if": {"properties": {"type": {"const": "step_complete"}}},
         "then": {"required": ["phase", "step", "status", "duration_ms"]}},
        {"if": {"properties": {"type": {"pattern": "_error$"}}}, "then": {"required": ["error"]}},
    ],
}  # fmt: skip  # a table: one row per line
faber_valid = fastjsonschema.compile(FABER_EVENT_SCHEMA)


# -- writing FABER folders the way FABER's scripts do ----------------------------------------------------


def stamp(n: int) -> str:
    return f"2026-02-11T18:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z"


def fevent(eid: int, etype: str, run_id: str = RUN, **extra: Any) -> dict[str, Any]:
    """One event as emit-event.sh writes it."""
    return {
        "event_id": eid,
        "type": etype,
        "timestamp": stamp(eid),
        "run_id": run_id,
        "user": "dev",
        "source": "emit-event.sh",
        **extra,
    }


def faber_metadata(run_id: str = RUN, **changes: Any) -> dict[str, Any]:
    """metadata.json as init-run-directory.sh writes it."""
    body: dict[str, Any] = {
        "run_id": run_id,
        "work_id": "258",
        "target": None,
        "workflow_id": "default",
        "autonomy": "guarded",
        "source_type": "github",
        "phases": PHASES,
        "created_at": "2026-02-11T18:00:00.000Z",
        "created_by": "dev",
        "relationships": {"parent_run_id": None, "rerun_of": None, "child_runs": []},
        "environment": {"hostname": "box", "git_branch": "main", "git_commit": "abc123", "working_directory": "/src"},
    }
    body.update(changes)
    return body


def write_run(
    base: Path,
    run_id: str,
    events: list[dict[str, Any]],
    *,
    metadata: dict[str, Any] | None = None,
    next_id: int | None = None,
) -> Path:
    folder = base / run_id
    (folder / "events").mkdir(parents=True, exist_ok=True)
    if metadata is not None:
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))
        state = {
            "run_id": run_id,
            "work_id": metadata.get("work_id"),
            "workflow_version": "2.1",
            "status": "pending",
            "current_phase": None,
            "last_event_id": 0,
            "phases": {p: {"status": "pending", "steps": []} for p in PHASES},
        }
        (folder / "state.json").write_text(json.dumps(state, indent=2))
    for e in events:
        (folder / "events" / f"{e['event_id']:03d}-{e['type']}.json").write_text(json.dumps(e, indent=2))
    nxt = next_id if next_id is not None else max((e["event_id"] for e in events), default=0) + 1
    (folder / "events" / ".next-id").write_text(f"{nxt}\n")
    return folder


def failed_at_build(run_id: str = RUN) -> list[dict[str, Any]]:
    return [
        fevent(1, "workflow_start", run_id, metadata={"work_id": "258", "phases": PHASES}),
        fevent(2, "phase_start", run_id, phase="frame", status="started"),
        fevent(3, "phase_complete", run_id, phase="frame", status="completed"),
        fevent(4, "phase_start", run_id, phase="architect"),
        fevent(5, "phase_complete", run_id, phase="architect"),
        fevent(6, "phase_start", run_id, phase="build"),
        fevent(7, "step_start", run_id, phase="build", step="compile"),
        fevent(8, "approval_request", run_id, phase="build", message="deploy?"),
        fevent(9, "hook_execute", run_id, phase="build", metadata={"hook": "pre-build"}),
        fevent(
            10,
            "artifact_create",
            run_id,
            phase="build",
            artifacts=[{"type": "branch", "name": "feat/258", "url": "https://github.com/acme/web/tree/feat/258"}],
        ),
        fevent(
            11,
            "step_error",
            run_id,
            phase="build",
            step="compile",
            status="failed",
            error={"code": "COMPILE_FAILED", "message": "exit 2", "recoverable": True},
        ),
    ]


def faber_ids(store: RunStore, run_id: str) -> list[Any]:
    return [e.metadata[IMPORT_KEY]["event_id"] for e in store.get_run(run_id).log.read()]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return tmp_path / "project"


@pytest.fixture(params=["local", "s3"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    """The store runs are imported into: a local folder or moto S3."""
    return make_store(str(request.param), tmp_path, request, fsync=False)


# -- import -------------------------------------------------------------------------------------------


def test_import_keeps_the_id_the_order_and_the_faber_fields_and_folds_the_state(project: Path, dest: RunStore) -> None:
    write_run(project / BASE, RUN, failed_at_build(), metadata=faber_metadata())
    report = import_faber(str(project), dest)
    assert [("imported", RUN, 11, 11)] == [
        (r.outcome, r.run_id, r.events_found, r.events_imported) for r in report.runs
    ]
    assert (True, False) == (report.ok, report.runs[0].damaged)
    run = dest.get_run(RUN)
    events = list(run.log.read())
    assert list(range(1, 12)) == [e.event_id for e in events]
    assert list(range(1, 12)) == faber_ids(dest, RUN)
    assert [stamp(i) for i in range(1, 12)] == [e.timestamp for e in events]
    assert ["approval_request", "hook_execute"] == [events[7].type, events[8].type]
    assert {"code": "COMPILE_FAILED", "message": "exit 2", "recoverable": True} == events[10].error
    # FABER's artifact_create has only an artifacts list: kept as ours, its first artifact is the state's artifact.
    assert ("artifact_create", ["metadata.path", "metadata.kind"]) == (
        events[9].type,
        events[9].metadata[IMPORT_KEY]["derived"],
    )
    assert "feat/258" == events[9].artifacts[0]["name"]  # type: ignore[index]
    assert [("https://github.com/acme/web/tree/feat/258", "branch")] == [
        (a.path, a.kind) for a in run.state().artifacts
    ]
    # FABER's own state.json still says pending; the fold says where it failed.
    state = run.state()
    failed = state.failed_step
    assert failed is not None
    assert ("failing", "build", "compile", "exit 2") == (state.status, failed.phase, failed.name, failed.error)
    assert [
        ("frame", "completed"),
        ("architect", "completed"),
        ("build", "failed"),
        ("evaluate", "pending"),
        ("release", "pending"),
    ] == [(p.name, p.status) for p in state.phases.values()]
    meta = run.metadata
    assert {"work_id": "258", "workflow_id": "default", "autonomy": "guarded", "source_type": "github"} == meta.params
    assert (PHASES, "2026-02-11T18:00:00.000Z") == (meta.phases, meta.created_at)
    assert ("box", "box", "abc123") == (
        meta.environment["hostname"],
        meta.environment["host"],
        meta.environment["git_commit"],
    )
    assert ("faber", RUN) == (meta.imported_from["format"], meta.imported_from["run_id"])  # type: ignore[index]
    plan = Resumer(dest).plan(RUN)
    assert (True, "build", "compile") == (plan.resumable, plan.resume_phase, plan.resume_step)
    assert "2 of 5 phases done" == run.status_view().progress


def test_importing_twice_imports_nothing_new_and_a_grown_faber_run_gets_only_its_new_events(
    project: Path, dest: RunStore
) -> None:
    folder = write_run(project / OLD_BASE, RUN, failed_at_build()[:7], metadata=faber_metadata())
    first = import_faber(str(project), dest)
    second = import_faber(str(project), dest)
    assert (7, 0, "unchanged") == (first.events_imported, second.events_imported, second.runs[0].outcome)
    # FABER went on writing to the same folder: the next import appends just that.
    later = failed_at_build()[7:]
    write_run(project / OLD_BASE, RUN, later)
    third = import_faber(str(folder), dest)  # a single run folder works too
    assert ("updated", 4, 11) == (third.runs[0].outcome, third.events_imported, len(faber_ids(dest, RUN)))
    assert 0 == import_faber(str(project / OLD_BASE), dest).events_imported


def test_a_run_damaged_by_faber_races_is_imported_with_its_gaps_and_duplicates_reported_never_renumbered(
    project: Path, dest: RunStore
) -> None:
    events = [
        fevent(1, "workflow_start"),
        fevent(2, "phase_start", phase="build"),
        fevent(4, "step_start", phase="build", step="compile"),
        fevent(5, "step_complete", phase="build", step="compile", status="completed", duration_ms=12),
        fevent(5, "step_start", phase="build", step="test"),
    ]
    events[4]["timestamp"] = stamp(6)  # the second writer of number 5 came later
    write_run(project / BASE, RUN, events, metadata=faber_metadata(), next_id=5)  # the counter fell behind
    report = import_faber(str(project), dest)
    (run,) = report.runs
    assert ((3,), ((5, ("005-step_complete.json", "005-step_start.json")),)) == (
        run.missing_event_ids,
        run.duplicate_event_ids,
    )
    assert (5, 6, True, 5) == (run.next_id, run.next_id_expected, run.damaged, run.events_imported)
    stored = list(dest.get_run(RUN).log.read())
    # Our log is gapless; each event keeps its FABER id and file, in FABER's order.
    assert [1, 2, 4, 5, 5] == [e.metadata[IMPORT_KEY]["event_id"] for e in stored]
    assert ["workflow_start", "phase_start", "step_start", "step_complete", "step_start"] == [e.type for e in stored]
    assert "005-step_start.json" == stored[4].metadata[IMPORT_KEY]["file"]
    text = "\n".join(report.lines())
    assert "missing FABER event ids: 3" in text and "FABER event id 5 is used by 2 files" in text
    assert "events/.next-id says 5, the files say 6" in text
    # Idempotent for damaged runs too.
    assert 0 == import_faber(str(project), dest).events_imported


def test_a_run_with_more_than_999_events_is_imported_in_numeric_not_lexical_order(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "store"), fsync=False)
    n = 1002
    events = [fevent(1, "workflow_start")]
    events += [fevent(i, "checkpoint", metadata={"label": f"c{i}"}) for i in range(2, n)]
    events.append(fevent(n, "workflow_complete"))
    write_run(tmp_path / "faber", RUN, events, metadata=faber_metadata())
    assert "1000-checkpoint.json" < "999-checkpoint.json"  # what a lexical sort would get wrong
    report = import_faber(str(tmp_path / "faber"), store)
    assert (n, False) == (report.events_imported, report.runs[0].damaged)
    assert list(range(1, n + 1)) == faber_ids(store, RUN)
    assert ("completed", n) == (store.get_run(RUN).state().status, store.get_run(RUN).state().last_event_id)


def test_a_plan_based_faber_id_gets_a_stable_new_id_with_the_original_recorded(project: Path, dest: RunStore) -> None:
    original = "fractary-faber-258/2026-02-11T18-56-42"
    events = [fevent(1, "workflow_start", original), fevent(2, "phase_start", original, phase="frame")]
    write_run(project / BASE, original, events)  # plan-based runs keep no metadata.json in their folder
    report = import_faber(str(project), dest)
    (run,) = report.runs
    rid = mapped_run_id(original)
    assert (original, str(rid), "local", "fractary-faber-258") == (
        run.original_run_id,
        run.run_id,
        rid.org,
        rid.project,
    )
    meta = dest.get_run(rid).metadata
    assert original == meta.imported_from["run_id"]  # type: ignore[index]
    assert [original, original] == [
        e.metadata.get(IMPORT_KEY, {}).get("run_id", original) for e in dest.get_run(rid).log.read()
    ]
    assert rid == mapped_run_id(original)  # the same FABER id always maps to the same run
    assert 0 == import_faber(str(project), dest).events_imported


def test_relationships_become_lineage_and_parents_are_imported_first(project: Path, dest: RunStore) -> None:
    # The re-run sorts first by path; the import still creates its parent before it.
    write_run(
        project / BASE,
        PARENT,
        failed_at_build(PARENT),
        metadata=faber_metadata(
            PARENT, created_at=stamp(0), relationships={"parent_run_id": None, "rerun_of": None, "child_runs": [RUN]}
        ),
    )
    child_meta = faber_metadata(RUN, relationships={"parent_run_id": None, "rerun_of": PARENT, "child_runs": []})
    write_run(project / BASE, RUN, [fevent(1, "workflow_start")], metadata=child_meta)
    assert sorted([PARENT, RUN]) == [PARENT, RUN]
    import_faber(str(project), dest)
    lineage = dest.lineage(RUN)
    assert ((PARENT,), PARENT) == (lineage.ancestors, lineage.root_run_id)
    assert [RUN] == dest.children(PARENT)
    assert PARENT == dest.get_run(RUN).metadata.lineage["faber"]["rerun_of"]


def test_a_parent_outside_the_import_is_kept_as_a_note_and_a_native_run_with_the_same_id_is_not_touched(
    project: Path, tmp_path: Path
) -> None:
    dest = RunStore(str(tmp_path / "store"), fsync=False)
    dest.create_run("acme", "web", run_id=PARENT)
    write_run(project / BASE, PARENT, failed_at_build(PARENT), metadata=faber_metadata(PARENT))
    missing = "acme/web/11111111-2222-4333-8444-555555555555"
    meta = faber_metadata(RUN, relationships={"parent_run_id": missing, "rerun_of": None, "child_runs": []})
    write_run(project / BASE, RUN, [fevent(1, "workflow_start")], metadata=meta)
    report = import_faber(str(project), dest)
    outcomes = {r.run_id: r for r in report.runs}
    assert ("conflict", 0, False) == (outcomes[PARENT].outcome, dest.get_run(PARENT).state().last_event_id, report.ok)
    assert any("not in the store" in n for n in outcomes[RUN].notes)
    assert None is dest.get_run(RUN).metadata.parent_run_id


def test_an_unreadable_event_file_keeps_its_place_and_its_text(project: Path, tmp_path: Path) -> None:
    dest = RunStore(str(tmp_path / "store"), fsync=False)
    folder = write_run(
        project / BASE, RUN, [fevent(1, "workflow_start"), fevent(3, "workflow_complete")], metadata=faber_metadata()
    )
    (folder / "events" / "002-phase_start.json").write_text('{"event_id": 2, "type": "phase_st')
    report = import_faber(str(project), dest)
    stored = list(dest.get_run(RUN).log.read())
    assert ["workflow_start", UNMAPPED_TYPE, "workflow_complete"] == [e.type for e in stored]
    assert '"phase_st' in stored[1].metadata[IMPORT_KEY]["extra"]["_unreadable"]
    assert any("002-phase_start.json is not JSON" in n for n in report.runs[0].notes)


# -- the workflow plan --------------------------------------------------------------------------------


def test_planned_phases_show_as_pending_in_order_and_a_resume_starts_at_one_that_never_started() -> None:
    store = RunStore("memory://plan-test")
    run = store.create_run("acme", "web", phases=["frame", {"name": "build", "steps": ["compile", "test"]}, "release"])
    assert ["frame", "build", "release"] == run.metadata.phases
    assert {"build": ["compile", "test"]} == store.get_run(run.id).metadata.steps
    run.start()
    run.log.emit("phase_start", phase="frame")
    run.log.emit("phase_complete", phase="frame")
    run.log.emit("phase_start", phase="hotfix")  # an unplanned phase keeps its place
    run.log.emit("phase_complete", phase="hotfix")
    state = run.state()
    assert [("frame", "completed"), ("hotfix", "completed"), ("build", "pending"), ("release", "pending")] == [
        (p.name, p.status) for p in state.phases.values()
    ]
    assert ["compile", "test"] == list(state.phases["build"].steps)
    assert "2 of 4 phases done" == run.status_view().progress
    run.fail("stopped")
    plan = Resumer(store).plan(run.id)
    assert ("build", "compile", ("frame", "hotfix")) == (plan.resume_phase, plan.resume_step, plan.completed_phases)


@pytest.mark.parametrize(("phases", "steps", "needle"), [
    ("build", None, "list of phase names"),
    (["build", "build"], None, "listed twice"),
    (["build"], {"test": ["a"]}, "not in the planned phases"),
    ([""], None, "non-empty string"),
])  # fmt: skip  # a table: one case per row
def test_a_bad_plan_is_refused_and_nothing_is_written(phases: Any, steps: Any, needle: str) -> None:
    store = RunStore("memory://bad-plan")
    with pytest.raises(InvalidParams, match=needle):
        store.create_run("acme", "web", phases=phases, steps=steps)
    assert [] == store.list_runs()


# -- export -------------------------------------------------------------------------------------------


def _comparable(event: Event) -> dict[str, Any]:
    body = event.to_dict()
    body["metadata"] = {k: v for k, v in body["metadata"].items() if k != IMPORT_KEY}
    body.pop("nonce", None)
    return body


def test_export_writes_faber_files_that_validate_against_faber_schema_and_import_gives_the_same_events(
    tmp_path: Path,
) -> None:
    store = RunStore(str(tmp_path / "store"), fsync=False)
    run = store.create_run(
        "acme", "web", {"work_id": 258}, {"team": "x"}, phases=["frame", {"name": "deploy", "steps": ["push"]}]
    )
    log = run.log
    log.emit("workflow_start", metadata={"work_id": 258, "workflow": "default"})
    log.emit("phase_start", phase="frame", status="started")
    log.emit("step_start", phase="frame", step="spec", idempotency_key="k1")
    log.emit("step_complete", phase="frame", step="spec", duration_ms=12.5, artifacts=["specs/258.md"])
    log.emit("phase_complete", phase="frame", status="completed")
    log.emit("phase_start", phase="deploy")  # a phase name FABER does not know
    approval = run.request_approval("ship", phase="deploy")
    run.decide(approval, "approve", client_token="t1")
    log.emit("step_start", phase="deploy", step="push", status="running")
    log.emit("step_skip", phase="deploy", step="push")
    log.emit("step_error", phase="deploy", step="push", error="exit 3")
    original = list(log.read())
    result = export_faber(store, run.id, str(tmp_path / "faber"))
    folder = Path(result.path)
    names = sorted(p.name for p in (folder / "events").iterdir())
    assert [f"{e.event_id:03d}-" for e in original] == [n[:4] for n in names if n != ".next-id"]
    assert f"{len(original) + 1}\n" == (folder / "events" / ".next-id").read_text()
    for name in names:
        if name != ".next-id":
            faber_valid(json.loads((folder / "events" / name).read_text()))  # raises if FABER would refuse it
    meta = json.loads((folder / "metadata.json").read_text())
    assert ("258", ["frame", "deploy"], run.id) == (meta["work_id"], meta["phases"], meta["run_id"])
    state = json.loads((folder / "state.json").read_text())
    assert ("failed", "completed") == (state["status"], state["phases"]["frame"]["status"])
    again = RunStore(str(tmp_path / "again"), fsync=False)
    assert 0 == import_faber(str(tmp_path / "faber"), again).runs[0].events_imported - len(original)
    back = again.get_run(run.id)
    assert [_comparable(e) for e in original] == [_comparable(e) for e in back.log.read()]
    assert (run.metadata.params, run.metadata.tags, run.metadata.steps) == (
        back.metadata.params,
        back.metadata.tags,
        back.metadata.steps,
    )
    assert run.state().to_dict() == back.state().to_dict()


def test_an_imported_faber_run_exports_under_its_own_types() -> None:
    event = Event(
        event_id=3,
        type=UNMAPPED_TYPE,
        timestamp=stamp(3),
        run_id=RUN,
        phase="build",
        artifacts=[{"type": "branch", "name": "feat/x"}],
        metadata={IMPORT_KEY: {"event_id": 3, "file": "003-artifact_create.json", "type": "artifact_create"}},
    )
    body = faber_event(event)
    faber_valid(body)
    assert ("artifact_create", None) == (body["type"], body.get("metadata"))


# -- the command line ---------------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_import_export_and_new_with_planned_phases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FABER_RUNLOG_CONFIG", raising=False)
    root = str(tmp_path / "store")
    write_run(tmp_path / BASE, RUN, failed_at_build(), metadata=faber_metadata())
    code, out, err = cli("--root", root, "import", str(tmp_path))
    assert (0, f"faber-runlog: created the store at {root}\n") == (code, err), out  # import creates the store
    assert "imported  acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55: 11 of 11 events imported" in out
    code, out, _ = cli("--root", root, "import", str(tmp_path), "--json")
    assert (0, 0) == (code, json.loads(out)["events_imported"])
    code, out, _ = cli("--root", root, "show", RUN)
    assert 0 == code and "progress: 2 of 5 phases done" in out and "evaluate     pending" in out
    code, out, err = cli("--root", root, "export", RUN, "--format", "faber", str(tmp_path / "out"))
    assert (0, "") == (code, err)
    assert (tmp_path / "out" / RUN / "events" / "011-step_error.json").is_file()
    code, _, err = cli("--root", root, "export", RUN, "--format", "faber", str(tmp_path / "out"))
    assert 1 == code and "--overwrite" in err
    code, out, err = cli(
        "--root", root, "new", "acme", "web", "--phase", "frame", "--phase", "build:compile,test", "--json"
    )
    assert (0, "") == (code, err)
    body = json.loads(out)
    assert (["frame", "build"], {"build": ["compile", "test"]}) == (body["phases"], body["steps"])
    code, out, _ = cli("--root", root, "show", body["run_id"])
    assert "progress: 0 of 2 phases done" in out
