"""FABER's MCP tools and resources, through the SDK's real stdio client against ``faber-runlog mcp``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_faber import BASE, RUN, faber_metadata, failed_at_build, write_run
from test_mcp_server import _session, _text

from faber_runlog import RunStore, import_faber
from faber_runlog._faber.convert import IMPORT_KEY, mapped_run_id

pytest.importorskip("mcp")


def _json(result: Any) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def test_a_client_written_for_faber_gateway_works_unchanged(tmp_path: Path) -> None:
    url = str(tmp_path / "runs")
    store = RunStore(url)
    write_run(tmp_path / "faber" / BASE, RUN, failed_at_build()[:7], metadata=faber_metadata())
    plan_id = "fractary-faber-258/2026-02-11T18-56-42"
    write_run(tmp_path / "faber" / BASE, plan_id, [])
    import_faber(str(tmp_path / "faber"), store)
    done = store.create_run("acme", "api", {"work_id": "7"})
    done.start()
    done.complete()
    seen: dict[str, Any] = {}

    async def body(session: Any) -> None:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        seen["schema"] = tools["fractary_faber_event_emit"].input_schema
        call = session.call_tool
        # Exactly the calls FABER's tool descriptions define.
        seen["emit"] = _json(
            await call(
                "fractary_faber_event_emit",
                {
                    "run_id": RUN,
                    "type": "step_complete",
                    "phase": "build",
                    "step": "compile",
                    "status": "completed",
                    "message": "compiled",
                    "duration_ms": 1200,
                    "metadata": {"attempt": 2},
                    "artifacts": [{"type": "file", "name": "app", "path": "dist/app"}],
                },
            )
        )
        seen["emit_faber_only"] = _json(
            await call(
                "fractary_faber_event_emit",
                {"run_id": RUN, "type": "approval_granted", "phase": "build", "status": "completed"},
            )
        )
        seen["emit_loose"] = _json(
            await call(
                "fractary_faber_event_emit",
                {"run_id": RUN, "type": "commit_create", "artifacts": [{"type": "commit", "name": "abc"}]},
            )
        )
        seen["emit_plan"] = _json(
            await call("fractary_faber_event_emit", {"run_id": plan_id, "type": "workflow_start"})
        )
        seen["emit_bad"] = _json(await call("fractary_faber_event_emit", {"run_id": RUN, "type": "no_such_type"}))
        seen["emit_missing"] = _json(
            await call(
                "fractary_faber_event_emit",
                {"run_id": "acme/web/00000000-0000-4000-8000-000000000000", "type": "workflow_start"},
            )
        )
        seen["get"] = _json(await call("fractary_faber_run_get", {"run_id": RUN, "include_events": True}))
        seen["get_missing"] = _json(await call("fractary_faber_run_get", {"run_id": "nope/x/y"}))
        seen["list"] = _json(await call("fractary_faber_run_list", {}))
        seen["in_progress"] = _json(await call("fractary_faber_run_list", {"status": "in_progress"}))
        seen["by_work"] = _json(await call("fractary_faber_run_list", {"work_id": "7", "limit": 5}))
        seen["consolidate_active"] = _json(await call("fractary_faber_event_consolidate", {"run_id": RUN}))
        seen["consolidate"] = _json(await call("fractary_faber_event_consolidate", {"run_id": done.id}))
        read = session.read_resource
        seen["r_runs"] = json.loads((await read("faber://runs")).contents[0].text)
        seen["r_run"] = json.loads((await read(f"faber://runs/{RUN}")).contents[0].text)
        seen["r_events"] = json.loads((await read(f"faber://runs/{RUN}/events")).contents[0].text)
        seen["r_state"] = json.loads((await read(f"faber://run/{RUN}/state")).contents[0].text)
        seen["r_old_events"] = json.loads((await read(f"faber://run/{RUN}/events")).contents[0].text)
        seen["tool_error"] = await call("fractary_faber_run_get", {})

    anyio.run(_session, ["--root", url], tmp_path, body)
    assert {"run_id", "type"} == set(seen["schema"]["required"])
    assert {
        "run_id",
        "type",
        "phase",
        "step",
        "status",
        "message",
        "metadata",
        "artifacts",
        "duration_ms",
        "error",
    } == set(seen["schema"]["properties"])
    emit = seen["emit"]
    assert ("success", "emit-event", 8, "step_complete", RUN) == (
        emit["status"],
        emit["operation"],
        emit["event_id"],
        emit["type"],
        emit["run_id"],
    )
    assert emit["event_path"].endswith("/events/00000000000000000008.json")
    assert ("success", 9) == (seen["emit_faber_only"]["status"], seen["emit_faber_only"]["event_id"])
    assert ("success", 10) == (seen["emit_loose"]["status"], seen["emit_loose"]["event_id"])
    assert ("success", 1) == (seen["emit_plan"]["status"], seen["emit_plan"]["event_id"])
    assert "workflow_start" == next(store.get_run(mapped_run_id(plan_id)).log.read()).type
    for key, needle in [
        ("emit_bad", "unknown event type"),
        ("emit_missing", "not found"),
        ("get_missing", "not found"),
    ]:
        assert ("error", True) == (seen[key]["status"], needle in seen[key].get("error", "")), (key, seen[key])
    stored = list(store.get_run(RUN).log.read())
    assert ("step_complete", {"attempt": 2}, 1200) == (stored[7].type, stored[7].metadata, stored[7].duration_ms)
    assert "commit_create" == stored[9].metadata[IMPORT_KEY]["type"]  # kept, as the importer keeps it
    get = seen["get"]
    assert ("success", "get-run", 10) == (get["status"], get["operation"], get["event_count"])
    assert ("258", ["frame", "architect", "build", "evaluate", "release"]) == (
        get["metadata"]["work_id"],
        get["metadata"]["phases"],
    )
    # Status words are FABER's: running is in_progress, a planned phase not started is pending.
    assert ("in_progress", "in_progress", "pending") == (
        get["state"]["status"],
        get["state"]["phases"]["build"]["status"],
        get["state"]["phases"]["evaluate"]["status"],
    )
    assert ("list-runs", 3) == (seen["list"]["operation"], seen["list"]["total"])
    assert [done.id] == [r["run_id"] for r in seen["list"]["runs"]][:1]  # newest first
    assert {RUN, str(mapped_run_id(plan_id))} == {r["run_id"] for r in seen["in_progress"]["runs"]}
    assert [(done.id, "completed", "7")] == [(r["run_id"], r["status"], r["work_id"]) for r in seen["by_work"]["runs"]]
    assert ("error", True) == (
        seen["consolidate_active"]["status"],
        "only completed" in seen["consolidate_active"]["error"],
    )
    cons = seen["consolidate"]
    assert ("success", "consolidate-events", 2) == (cons["status"], cons["operation"], cons["events_consolidated"])
    assert cons["output_path"].endswith("events.jsonl") and cons["size_bytes"] > 0
    assert 3 == seen["r_runs"]["total"]
    assert (RUN, 10) == (seen["r_run"]["run_id"], seen["r_run"]["event_count"])
    assert list(range(1, 11)) == [e["event_id"] for e in seen["r_events"]]
    assert ("workflow_start", "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55") == (
        seen["r_events"][0]["type"],
        seen["r_events"][0]["run_id"],
    )
    assert ("running", 10) == (seen["r_state"]["status"], seen["r_state"]["last_event_id"])
    assert 10 == len(seen["r_old_events"]["events"])
    assert seen["tool_error"].is_error and "run_id" in _text(seen["tool_error"])
