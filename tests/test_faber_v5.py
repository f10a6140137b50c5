"""Switching from FABER in one command: both FABER generations' folders, no trap, and the adversarial import cases.

The tests write FABER folders themselves, from the facts of ``fractary/faber`` (plugin v5.1.1): the earlier
plugin's uuid runs under ``.fractary/plugins/faber/runs``; v5's plan-based runs under ``.fractary/faber/runs``
(``{plan_id}/plan.json``, ``state-{ts}.json``, a ``.run-{ts}`` sentinel and ``{plan_id}/{ts}/events/NNN-{type}.json``,
events naming the run ``{plan_id}/{ts}``, the state ``{plan_id}-run-{ts}``) next to files that are not runs.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import make_store
from test_faber import BASE, OLD_BASE, PHASES, RUN, faber_metadata, failed_at_build, fevent, write_run

from faber_runlog import RunStore, export_faber, import_faber
from faber_runlog._faber.convert import IMPORT_KEY, UNMAPPED_TYPE, mapped_run_id
from faber_runlog._frontends.cli import main
from faber_runlog.errors import FaberRunNotImported, UnsafePath

PLAN = "acme-web-258"
TS = "2026-02-11T18-56-42Z"
EVENT_ID = f"{PLAN}/{TS}"
STATE_ID = f"{PLAN}-run-{TS}"


def write_plan_run(base: Path, events: list[dict[str, Any]], ts: str = TS, status: str = "in_progress") -> Path:
    """A v5 plan-based run as workflow-run and the MCP gateway leave it."""
    plan_dir = base / PLAN
    (plan_dir / ts / "events").mkdir(parents=True, exist_ok=True)
    plan = {
        "plan_id": PLAN,
        "created_by": "cli",
        "created_at": "2026-02-11T18:50:00Z",
        "workflow": "core",
        "autonomy": "guarded",
        "issue": {"source": "github", "id": "258"},
        "phases": [
            {"phase": p, "description": p, "steps": [{"action": f"do {p}"}]}
            for p in ("frame", "architect", "build", "evaluate", "release")
        ],
    }
    (plan_dir / "plan.json").write_text(json.dumps(plan, indent=2))
    state: dict[str, Any] = {
        "run_id": f"{PLAN}-run-{ts}",
        "plan_id": PLAN,
        "work_id": "258",
        "workflow_id": "core",
        "status": status,
        "current_phase": "build",
        "current_step_id": None,
        "phases": {
            "frame": {"status": "completed", "steps": {"fetch-issue": {"status": "completed"}}, "retry_count": 0},
            "architect": {"status": "completed", "steps": {}, "retry_count": 0},
            "build": {"status": "in_progress", "steps": {"compile": {"status": "pending"}}, "retry_count": 0},
            "evaluate": {"status": "pending", "steps": {}, "retry_count": 0},
            "release": {"status": "pending", "steps": {}, "retry_count": 0},
        },
        "steps_completed": [],
        "artifacts": {},
        "started_at": "2026-02-11T18:56:42.000Z",
        "updated_at": "2026-02-11T18:59:00.000Z",
    }
    (plan_dir / f"state-{ts}.json").write_text(json.dumps(state, indent=2))
    (plan_dir / f".run-{ts}").write_text("1")
    for e in events:
        path = plan_dir / ts / "events" / f"{e['event_id']:03d}-{e['type']}.json"
        path.write_text(json.dumps(e, indent=2))
    nxt = max((e["event_id"] for e in events), default=0) + 1
    (plan_dir / ts / "events" / ".next-id").write_text(str(nxt))
    return plan_dir


def v5_events(run_id: str = EVENT_ID) -> list[dict[str, Any]]:
    """What FABER v5's executors write, drift included: step_failed, workflow_failed, explicit nulls."""
    return [
        fevent(1, "workflow_start", run_id, source="mcp-gateway", metadata={"plan_id": PLAN, "run_id": STATE_ID}),
        fevent(2, "phase_start", run_id, phase="frame", step=None, status="started"),
        fevent(3, "guard_executed", run_id, phase=None, metadata={"guard_name": "g1", "result": "pass"}),
        fevent(4, "phase_complete", run_id, phase="frame", status="completed"),
        fevent(
            5,
            "artifact_create",
            run_id,
            phase="frame",
            artifacts=[{"type": "spec", "name": "SPEC-258", "path": "specs/SPEC-258.md"}],
        ),
        fevent(6, "phase_start", run_id, phase="build"),
        fevent(7, "step_start", run_id, phase="build", step="compile"),
        fevent(8, "step_failed", run_id, phase="build", metadata={"step_id": "compile", "error": "exit 2"}),
        fevent(9, "feedback_request", run_id, phase="build", metadata={"question": "retry?"}),
        fevent(10, "workflow_failed", run_id, phase="build", metadata={"error": "compile failed"}),
    ]


def non_run_files(base: Path) -> None:
    """What else FABER keeps in a runs folder: none of it is a run."""
    (base / ".active-run-id").write_text(STATE_ID)
    (base / "workflows").mkdir(parents=True, exist_ok=True)
    (base / "workflows" / "WF-ABC-1.json").write_text(json.dumps({"workflow_id": "WF-ABC-1", "work_id": "258"}))
    (base / "active").mkdir(exist_ok=True)
    (base / "active" / "258.json").write_text(json.dumps({"workflow_id": "WF-ABC-1"}))
    (base / "checkpoints").mkdir(exist_ok=True)
    (base / "checkpoints" / "CP-1.json").write_text("{}")
    (base / "manifests").mkdir(exist_ok=True)
    (base / "manifests" / "MAN-1.json").write_text("{}")
    (base / "changelog.ndjson").write_text('{"type": "x"}\n')


def both_generations(project: Path) -> None:
    """A project FABER's earlier plugin and FABER v5 both wrote to."""
    write_run(project / OLD_BASE, RUN, failed_at_build(), metadata=faber_metadata())
    write_plan_run(project / BASE, v5_events())
    non_run_files(project / BASE)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to check that nothing changed, byte for byte)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for name in ("FABER_RUNLOG_ROOT", "FABER_RUNLOG_CONFIG", "FABER_RUNS_PATH"):
        monkeypatch.delenv(name, raising=False)
    return folder


# -- no trap ------------------------------------------------------------------------------------------


def test_import_without_root_takes_both_generations_into_our_own_folder_and_leaves_faber_untouched(
    project: Path,
) -> None:
    both_generations(project)
    (project / "exported" / "acme" / "web" / "0b6f5d1a-2c3e-4f50-9a61-7b8c9d0e1f20" / "events").mkdir(parents=True)
    (project / "exported/acme/web/0b6f5d1a-2c3e-4f50-9a61-7b8c9d0e1f20/events/001-workflow_start.json").write_text(
        json.dumps(fevent(1, "workflow_start", "acme/web/0b6f5d1a-2c3e-4f50-9a61-7b8c9d0e1f20"))
    )
    before = tree(project / ".fractary")
    code, out, _ = cli("import", "--json")
    assert 0 == code, out
    report = json.loads(out)
    assert sorted([(RUN, "imported", 11), (EVENT_ID, "imported", 10)]) == sorted(
        (r["original_run_id"], r["outcome"], r["events_imported"]) for r in report["runs"]
    )  # the export folder elsewhere in the project is not searched, FABER's non-run files are skipped
    store = RunStore(str(project / ".faber_runlog" / "runs"))
    assert {RUN, str(mapped_run_id(EVENT_ID))} == {s.run_id for s in store.list_runs()}
    assert before == tree(project / ".fractary")
    code, out, _ = cli("import")  # idempotent
    assert (0, True) == (code, "2 unchanged" in out), out
    for args in (["list"], ["show", RUN], ["export", RUN, "--format", "faber", str(project / "out")]):
        assert 0 == cli(*args)[0], args
    assert before == tree(project / ".fractary")


def test_faber_runs_path_is_searched_and_a_folder_given_is_searched_alone(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_plan_run(project / "custom-runs", v5_events())
    write_run(project / OLD_BASE, RUN, failed_at_build()[:3], metadata=faber_metadata())
    monkeypatch.setenv("FABER_RUNS_PATH", "custom-runs")
    _, out, _ = cli("import", ".", "--json")
    assert {RUN, EVENT_ID} == {r["original_run_id"] for r in json.loads(out)["runs"]}
    _, out, _ = cli("import", str(project / OLD_BASE), "--json")
    assert [RUN] == [r["original_run_id"] for r in json.loads(out)["runs"]]


def test_a_store_in_fabers_folder_is_used_only_when_named_and_its_faber_runs_are_named_not_damaged(
    project: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = RunStore(str(project / OLD_BASE))
    ours = old.create_run("acme", "api")
    write_run(project / OLD_BASE, RUN, failed_at_build(), metadata=faber_metadata())
    before = tree(project / OLD_BASE / RUN)
    assert [] == list(RunStore().list_runs())  # FABER's folder is never a default (no 0.x fallback)
    monkeypatch.setenv("FABER_RUNLOG_ROOT", OLD_BASE)
    with caplog.at_level(logging.WARNING):
        code, out, _ = cli("list", "--json")
    assert 0 == code
    assert [ours.id] == [r["run_id"] for r in json.loads(out)]
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "damaged" in m], messages
    assert any("a FABER run" in m and "faber-runlog import" in m for m in messages), messages
    listed = RunStore().list_runs()
    assert [("faber", RUN)] == [(p.kind, p.run_id) for p in listed.problems]
    with pytest.raises(FaberRunNotImported, match=r"a FABER run.*faber-runlog import"):
        RunStore().get_run(RUN)
    code, _, err = cli("show", RUN)
    assert (True, False) == ("a FABER run" in err, "damaged" in err), err
    assert before == tree(project / OLD_BASE / RUN)


def test_a_new_project_gets_our_own_folder(project: Path) -> None:
    assert 0 == cli("init")[0]
    assert ((project / ".faber_runlog/gateway.json").is_file(), (project / ".faber_runlog/runs").is_dir()) == (
        True,
        True,
    )
    assert not (project / ".fractary").exists()


# -- FABER v5 -----------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    return make_store(str(request.param), tmp_path, request, fsync=False)


def test_a_plan_based_run_is_one_run_under_both_ids_with_drift_mapped_and_its_artifacts_in_the_state(
    project: Path, dest: RunStore
) -> None:
    write_plan_run(project / BASE, v5_events())
    report = import_faber(str(project), dest)
    assert [("imported", EVENT_ID, 10)] == [(r.outcome, r.original_run_id, r.events_imported) for r in report.runs]
    assert mapped_run_id(EVENT_ID) == mapped_run_id(STATE_ID)
    run = dest.get_run(mapped_run_id(STATE_ID))
    events = list(run.log.read())
    assert [
        ("workflow_start", None),
        ("phase_start", None),
        ("guard_executed", None),
        ("phase_complete", None),
        ("artifact_create", None),
        ("phase_start", None),
        ("step_start", None),
        ("step_error", "step_failed"),
        ("feedback_request", None),
        ("workflow_error", "workflow_failed"),
    ] == [(e.type, e.metadata[IMPORT_KEY].get("type")) for e in events]
    state = run.state()
    assert ("failed", ["specs/SPEC-258.md"]) == (state.status, [a.path for a in state.artifacts])
    assert ("258", "core", PHASES) == (
        run.metadata.params["work_id"],
        run.metadata.params["workflow_id"],
        list(run.metadata.phases),
    )
    assert ["fetch-issue"] == run.metadata.steps["frame"]
    assert STATE_ID == run.metadata.imported_from["metadata"]["plan"]["state_run_id"]  # type: ignore[index]
    again = import_faber(str(project), dest)
    assert (0, 1) == (again.events_imported, again.count("unchanged"))


def test_a_resume_plan_of_an_imported_v5_run_starts_at_its_failed_phase(project: Path) -> None:
    from faber_runlog import Resumer

    write_plan_run(project / BASE, v5_events()[:8])
    store = RunStore(str(project / "runs"))
    import_faber(str(project), store)
    plan = Resumer(store).plan(str(mapped_run_id(EVENT_ID)))
    assert "architect" == plan.resume_phase  # the first planned phase the events never completed


def test_a_started_v5_run_without_events_yet_is_imported_empty(project: Path) -> None:
    write_plan_run(project / BASE, [])
    store = RunStore(str(project / "runs"))
    report = import_faber(str(project), store)
    assert [("imported", EVENT_ID, 0)] == [(r.outcome, r.original_run_id, r.events_found) for r in report.runs]


# -- the adversarial cases (issue 19, sections 3 and 4) -------------------------------------------------


def test_import_does_not_follow_a_symlinked_event_file_out_of_the_source(project: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(fevent(2, "checkpoint", message="the secret")))
    folder = write_run(project / BASE, RUN, failed_at_build()[:1], metadata=faber_metadata())
    os.symlink(secret, folder / "events" / "002-checkpoint.json")
    store = RunStore(str(tmp_path / "runs"))
    report = import_faber(str(project), store)
    assert 1 == report.runs[0].events_imported
    assert not any("the secret" in str(e.message) for e in store.get_run(RUN).log.read())
    assert any("symlink" in n for n in report.runs[0].notes)


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_into_a_destination_with_symlinks_writes_and_deletes_nothing_outside(
    tmp_path: Path, overwrite: bool
) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()
    outside = tmp_path / "outside"
    (outside / "events").mkdir(parents=True)
    (outside / "events" / "001-keep.json").write_text("keep")
    (outside / "metadata.json").write_text("keep")
    dest = tmp_path / "dest"
    (dest / "acme" / "web").mkdir(parents=True)
    os.symlink(outside, dest / "acme" / "web" / run.run_id.uuid)
    before = tree(outside)
    with pytest.raises(UnsafePath, match="symlink"):
        export_faber(store, run.id, str(dest), overwrite=overwrite)
    assert before == tree(outside)


@pytest.mark.parametrize("how", ["next-id", "file"])
def test_a_huge_faber_number_does_not_exhaust_memory(project: Path, how: str) -> None:
    events = failed_at_build()[:2]
    if how == "file":
        events.append(dict(fevent(3, "checkpoint"), event_id=10**12))
    folder = write_run(project / BASE, RUN, events, metadata=faber_metadata(), next_id=10**12 + 1)
    assert (how == "file") == (folder / "events" / "1000000000000-checkpoint.json").exists()
    report = import_faber(str(project), RunStore(str(project / "runs")))
    r = report.runs[0]
    assert (len(events), True) == (r.events_imported, len(r.missing_event_ids) <= 10_000)
    assert any("more FABER event ids are missing" in n for n in r.notes)


def test_phases_that_are_not_a_list_are_reported_and_the_import_goes_on(project: Path) -> None:
    write_run(project / BASE, RUN, failed_at_build()[:2], metadata=faber_metadata(phases=5))
    report = import_faber(str(project), RunStore(str(project / "runs")))
    assert ("imported", 2) == (report.runs[0].outcome, report.runs[0].events_imported)
    assert any("planned phases 5 not kept" in n for n in report.runs[0].notes)


def test_two_events_with_one_restored_idempotency_key_are_both_kept_and_counted(project: Path) -> None:
    marker = {"faber_runlog": {"fields": {"idempotency_key": "k1"}}}
    events = [
        fevent(1, "workflow_start"),
        fevent(2, "checkpoint", metadata=dict(marker)),
        fevent(3, "checkpoint", metadata=dict(marker)),
        fevent(4, "checkpoint"),
    ]
    write_run(project / BASE, RUN, events, metadata=faber_metadata())
    store = RunStore(str(project / "runs"))
    report = import_faber(str(project), store)
    held = list(store.get_run(RUN).log.read())
    assert (4, 4) == (report.runs[0].events_imported, len(held))
    assert (0, 1) == (import_faber(str(project), store).events_imported, 1)


def test_a_log_sealed_event_in_a_faber_folder_does_not_seal_the_run(project: Path) -> None:
    seal = fevent(2, "log_sealed", metadata={"through": 1, "size": 1, "sha256": "sha256:" + "0" * 64})
    write_run(
        project / BASE, RUN, [fevent(1, "workflow_start"), seal, fevent(3, "checkpoint")], metadata=faber_metadata()
    )
    store = RunStore(str(project / "runs"))
    report = import_faber(str(project), store)
    run = store.get_run(RUN)
    assert (3, None) == (report.runs[0].events_imported, run.state().sealed_at)
    assert [UNMAPPED_TYPE] == [e.type for e in run.log.read() if e.metadata[IMPORT_KEY].get("type") == "log_sealed"]


def test_reimporting_an_unchanged_folder_after_consolidation_is_unchanged_not_a_conflict(project: Path) -> None:
    from faber_runlog import consolidate

    events = [
        fevent(1, "workflow_start"),
        fevent(2, "phase_start", phase="frame"),
        fevent(3, "workflow_complete", status="completed"),
    ]
    write_run(project / BASE, RUN, events, metadata=faber_metadata())
    store = RunStore(str(project / "runs"))
    import_faber(str(project), store)
    consolidate(store, RUN)
    again = import_faber(str(project), store)
    assert [("unchanged", 0)] == [(r.outcome, r.events_imported) for r in again.runs]


def test_a_damaged_earlier_import_fails_alone_and_the_other_runs_import(project: Path) -> None:
    other = "acme/web/0b6f5d1a-2c3e-4f50-9a61-7b8c9d0e1f20"
    write_run(project / BASE, RUN, failed_at_build()[:2], metadata=faber_metadata())
    store = RunStore(str(project / "runs"))
    import_faber(str(project), store)
    (project / "runs" / RUN / "metadata.json").write_text("{broken")
    write_run(project / BASE, other, failed_at_build(other)[:3], metadata=faber_metadata(other))
    report = import_faber(str(project), store)
    assert {(RUN, "failed"), (other, "imported")} == {(r.original_run_id, r.outcome) for r in report.runs}


def test_a_run_over_999_events_with_gaps_and_duplicates_keeps_every_file(project: Path) -> None:
    events = [fevent(i, "checkpoint", EVENT_ID) for i in range(1, 1003) if i != 500]
    events.append(dict(fevent(1000, "step_start", EVENT_ID, phase="build", step="x")))
    write_plan_run(project / BASE, events)
    (project / BASE / PLAN / TS / "events" / "1000-step_start.json").write_text(json.dumps(events[-1]))
    store = RunStore(str(project / "runs"), fsync=False)
    report = import_faber(str(project), store)
    r = report.runs[0]
    assert ((500,), 1002) == (r.missing_event_ids, r.events_imported)
    assert [1000, 1000] == [d for d, files in r.duplicate_event_ids for _ in files]
    ids = [e.metadata[IMPORT_KEY]["event_id"] for e in store.get_run(mapped_run_id(EVENT_ID)).log.read()]
    assert (sorted(ids), 999, 1000, 1000, 1001) == (ids, ids[997], ids[998], ids[999], ids[1000])


# -- FABER v5's MCP surface, through the SDK's stdio client --------------------------------------------------


def test_faber_v5_mcp_tools_answer_in_v5_shapes_and_an_emit_stored_otherwise_says_so(project: Path) -> None:
    import anyio
    from test_mcp_server import _session

    pytest.importorskip("mcp")
    write_plan_run(project / BASE, v5_events()[:7])
    before = tree(project / ".fractary")
    url = str(project / "store")
    store = RunStore(url)
    import_faber(str(project), store)
    done = store.create_run("acme", "api", {"work_id": "7"})
    done.start()
    done.complete()
    seen: dict[str, Any] = {}

    async def body(session: Any) -> None:
        names = {t.name for t in (await session.list_tools()).tools}
        seen["names"] = names

        async def call(name: str, args: dict[str, Any]) -> Any:
            result = await session.call_tool(name, args)
            assert not result.is_error, result.content
            return json.loads(result.content[0].text)

        seen["emit_loose"] = await call(
            "fractary_faber_event_emit",
            {"run_id": STATE_ID, "type": "commit_create", "artifacts": [{"type": "commit", "name": "abc"}]},
        )
        seen["emit_ok"] = await call(
            "fractary_faber_event_emit", {"run_id": EVENT_ID, "type": "step_start", "phase": "build", "step": "link"}
        )
        seen["status"] = await call("fractary_faber_workflow_status", {"work_id": "258"})
        seen["status_none"] = await call("fractary_faber_workflow_status", {})
        seen["pause"] = await call("fractary_faber_workflow_pause", {"workflow_id": STATE_ID})
        seen["resume"] = await call("fractary_faber_workflow_resume", {"workflow_id": EVENT_ID})
        seen["fail"] = await call(
            "fractary_faber_event_emit",
            {"run_id": EVENT_ID, "type": "workflow_error", "error": {"code": "X", "message": "boom"}},
        )
        seen["recover"] = await call("fractary_faber_workflow_recover", {"workflow_id": STATE_ID})
        seen["cleanup"] = await call("fractary_faber_workflow_cleanup", {"max_age_days": 1})
        seen["cleanup_bad"] = await call("fractary_faber_workflow_cleanup", {"max_age_days": 0})

    anyio.run(_session, ["--root", url], project, body)
    assert {
        "fractary_faber_workflow_status",
        "fractary_faber_workflow_pause",
        "fractary_faber_workflow_resume",
        "fractary_faber_workflow_recover",
        "fractary_faber_workflow_cleanup",
    } <= seen["names"]
    loose = seen["emit_loose"]
    assert ("success", "commit_create", UNMAPPED_TYPE, True) == (
        loose["status"],
        loose["type"],
        loose["stored_type"],
        "not 'commit_create'" in loose["warning"],
    )
    assert ("success", False) == (seen["emit_ok"]["status"], "stored_type" in seen["emit_ok"]), seen["emit_ok"]
    status = seen["status"]
    assert ("build", 20, "in_progress") == (status["currentPhase"], status["progress"], status["state"]["status"])
    assert ("error", "workflow_status") == (seen["status_none"]["status"], seen["status_none"]["operation"])
    assert ("success", "Workflow paused") == (seen["pause"]["status"], seen["pause"]["message"])
    assert ("in_progress", "running", "258") == (
        seen["resume"]["status"],
        seen["resume"]["run_status"],
        seen["resume"]["work_id"],
    )
    assert ("in_progress", "architect") == (seen["recover"]["status"], seen["recover"]["resume_phase"])
    assert ("success", 0, []) == (seen["cleanup"]["status"], seen["cleanup"]["deleted"], seen["cleanup"]["errors"])
    assert "error" == seen["cleanup_bad"]["status"]
    assert before == tree(project / ".fractary")


def test_export_in_v5_plan_form_writes_the_layout_faber_reads_and_imports_back_into_the_same_run(
    tmp_path: Path,
) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web", {"work_id": "258"}, phases=["frame", "build"])
    run.start()
    run.log.emit("phase_start", phase="frame")
    run.log.emit("phase_complete", phase="frame")
    dest = tmp_path / "faber" / BASE
    code, out, _ = cli(
        "--root", str(tmp_path / "runs"), "export", run.id, "--format", "faber", str(dest), "--id-form", "plan"
    )
    assert 0 == code, out
    plan_dir = dest / "acme-web-258"
    ts = next(p.name[len(".run-") :] for p in plan_dir.iterdir() if p.name.startswith(".run-"))
    state = json.loads((plan_dir / f"state-{ts}.json").read_text())
    plan = json.loads((plan_dir / "plan.json").read_text())
    events = sorted((plan_dir / ts / "events").glob("*.json"))
    assert (f"acme-web-258-run-{ts}", "in_progress", ["frame", "build"]) == (
        state["run_id"],
        state["status"],
        [p["phase"] for p in plan["phases"]],
    )
    assert {"plan_id", "created_by", "created_at", "workflow", "phases"} <= set(plan)
    assert [f"acme-web-258/{ts}"] * 3 == [json.loads(p.read_text())["run_id"] for p in events]
    other = RunStore(str(tmp_path / "other"))
    report = import_faber(str(tmp_path / "faber"), other)
    assert [(run.id, "imported", 3)] == [(r.run_id, r.outcome, r.events_imported) for r in report.runs]
    assert [e.type for e in run.log.read()] == [e.type for e in other.get_run(run.id).log.read()]


def test_the_migration_page_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    page = (Path(__file__).parent.parent / "docs" / "faber.md").read_text()
    monkeypatch.chdir(tmp_path)
    for name in ("FABER_RUNLOG_ROOT", "FABER_RUNLOG_CONFIG", "FABER_RUNS_PATH"):
        monkeypatch.delenv(name, raising=False)
    namespace: dict[str, Any] = {}
    for m in re.finditer(r"(<!-- docs-test: skip[^\n]*\n)?```python\n(.*?)```", page, re.S):
        if m.group(1) is None:
            exec(m.group(2), namespace)
    code, out, _ = cli("import")
    assert 0 == code
    block = re.search(r"```console\n\$ faber-runlog import\n(unchanged.*?)```", page, re.S)
    assert block is not None
    assert block.group(1) == out


def test_restored_fields_that_are_not_event_fields_are_not_passed_on(project: Path) -> None:
    marker = {"faber_runlog": {"fields": {"lease_epoch": 3, "nonce": "x", "message": "restored"}}}
    write_run(project / BASE, RUN, [fevent(1, "workflow_start", metadata=marker)], metadata=faber_metadata())
    store = RunStore(str(project / "runs"))
    report = import_faber(str(project), store)
    assert [("imported", 1)] == [(r.outcome, r.events_imported) for r in report.runs]
    assert "restored" == next(store.get_run(RUN).log.read()).message
