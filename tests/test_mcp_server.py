"""The MCP gateway through the SDK's real stdio client, against ``faber-runlog mcp`` in a subprocess."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import BUCKET, S3Server

from faber_runlog import RunStore

pytest.importorskip("mcp")


def _server_command(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> tuple[list[str], RunStore]:
    if kind == "local":
        url = str(tmp_path / "runs")
        return ["--root", url], RunStore(url)
    server: S3Server = request.getfixturevalue("s3_server")
    url = f"s3://{BUCKET}/mcp-{uuid.uuid4().hex}"
    options = {k: v for k, v in server.storage_options.items() if k not in ("key", "secret")}
    return ["--root", url, "--storage-options", json.dumps(options)], RunStore(
        url, storage_options=server.storage_options
    )


async def _session(args: list[str], cwd: Path, body: Any) -> Any:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "PATH", "HOME", "PYTHON"))}
    params = StdioServerParameters(command=sys.executable, args=["-m", "faber_runlog", *args, "mcp"], cwd=cwd, env=env)
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await body(session)


def _structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data: dict[str, Any] = json.loads(result.content[0].text)
    return data


def _text(result: Any) -> str:
    return "\n".join(c.text for c in result.content)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_tools_and_resources_over_a_real_stdio_session(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args, store = _server_command(tmp_path, kind, request)
    seen: dict[str, Any] = {}

    async def body(session: Any) -> None:
        tools = await session.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        templates = await session.list_resource_templates()
        seen["templates"] = sorted(t.uri_template for t in templates.resource_templates)
        created = _structured(
            await session.call_tool("create_run", {"org": "acme", "project": "web", "params": {"work_id": "220"}})
        )
        run_id = seen["run_id"] = created["run_id"]
        for etype, extra in [
            ("workflow_start", {}),
            ("phase_start", {"phase": "build"}),
            ("step_start", {"phase": "build", "step": "compile"}),
            ("step_error", {"phase": "build", "step": "compile", "error": "exit 2"}),
        ]:
            emitted = _structured(await session.call_tool("emit_event", {"run_id": run_id, "type": etype, **extra}))
            seen.setdefault("ids", []).append(emitted["event_id"])
        seen["invalid"] = await session.call_tool("emit_event", {"run_id": run_id, "type": "step_start"})
        seen["unknown_type"] = await session.call_tool("emit_event", {"run_id": run_id, "type": "no_such_type"})
        seen["bad_args"] = await session.call_tool("emit_event", {"run_id": run_id})
        seen["bad_id"] = await session.call_tool("get_state", {"run_id": "acme/web/nope"})
        seen["missing"] = await session.call_tool(
            "get_state", {"run_id": "acme/web/00000000-0000-4000-8000-000000000000"}
        )
        seen["state"] = _structured(await session.call_tool("get_state", {"run_id": run_id}))
        seen["state_at_2"] = _structured(await session.call_tool("get_state", {"run_id": run_id, "at": 2}))
        seen["events"] = _structured(await session.call_tool("list_events", {"run_id": run_id, "since": 1, "limit": 2}))
        seen["runs"] = _structured(await session.call_tool("list_runs", {"status": "failing"}))  # a failed step
        seen["plan"] = _structured(await session.call_tool("resume_plan", {"run_id": run_id}))
        state = await session.read_resource(f"faber://run/{run_id}/state")
        seen["state_resource"] = json.loads(state.contents[0].text)
        encoded = await session.read_resource(f"faber://run/{run_id.replace('/', '%2F')}/events")
        seen["events_resource"] = json.loads(encoded.contents[0].text)
        runs = await session.read_resource("faber://runs/list")
        seen["runs_resource"] = json.loads(runs.contents[0].text)
        try:
            await session.read_resource("faber://run/acme/web/00000000-0000-4000-8000-000000000000/state")
        except Exception as e:  # noqa: BLE001  (whatever the client raises for it is checked below)
            seen["missing_resource"] = str(e)
        # The server is still serving after every refusal.
        seen["after"] = _structured(await session.call_tool("list_runs", {}))

    anyio.run(_session, args, tmp_path, body)
    run_id = seen["run_id"]
    faber = [
        "fractary_faber_event_consolidate",
        "fractary_faber_event_emit",
        "fractary_faber_run_get",
        "fractary_faber_run_list",
    ]  # FABER's gateway tools (tests/test_faber_mcp.py)
    assert {"create_run", "emit_event", *faber, "get_state", "list_events", "list_runs", "resume_plan"} <= set(
        seen["tools"]
    )
    assert [
        "faber://run/{+run_id}/events",
        "faber://run/{+run_id}/state",
        "faber://runs/{+run_id}",
        "faber://runs/{+run_id}/events",
    ] == seen["templates"]
    assert [1, 2, 3, 4] == seen["ids"]
    for key, needle in [
        ("invalid", "missing the fields 'phase', 'step'"),
        ("unknown_type", "unknown event type"),
        ("bad_args", "type"),
        ("bad_id", "invalid run uuid 'nope'"),
        ("missing", "not found"),
    ]:
        result = seen[key]
        assert result.is_error, key
        assert needle in _text(result), (key, _text(result))
    assert 4 == store.get_run(run_id).state().last_event_id  # refused events wrote nothing
    assert ("failing", 4, "exit 2") == (
        seen["state"]["status"],
        seen["state"]["last_event_id"],
        seen["state"]["errors"][-1]["message"],
    )
    assert 2 == seen["state_at_2"]["last_event_id"]
    assert ([2, 3], 3) == ([e["event_id"] for e in seen["events"]["events"]], seen["events"]["next_since"])
    assert [run_id] == [r["run_id"] for r in seen["runs"]["runs"]]
    assert (True, "build", "compile") == (
        seen["plan"]["resumable"],
        seen["plan"]["resume_phase"],
        seen["plan"]["resume_step"],
    )
    assert seen["state"] == seen["state_resource"]
    assert [1, 2, 3, 4] == [e["event_id"] for e in seen["events_resource"]["events"]]
    assert [run_id] == [r["run_id"] for r in seen["runs_resource"]["runs"]]
    assert "not found" in seen["missing_resource"]
    assert 1 == seen["after"]["total"]


def test_with_logging_disabled_emit_event_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faber_runlog._services.gateway import CONFIG_PATH, GatewayConfig, write_config

    write_config(GatewayConfig(enabled=False), tmp_path / CONFIG_PATH)
    store = RunStore(str(tmp_path / ".faber_runlog/runs"))
    run = store.create_run("acme", "web")
    seen: dict[str, Any] = {}

    async def body(session: Any) -> None:
        seen["emit"] = _structured(await session.call_tool("emit_event", {"run_id": run.id, "type": "workflow_start"}))
        seen["create"] = _structured(await session.call_tool("create_run", {"org": "acme", "project": "web"}))

    anyio.run(_session, ["--config", str(tmp_path / CONFIG_PATH)], tmp_path, body)
    assert False is seen["emit"]["written"] and False is seen["create"]["written"]
    assert (1, 0) == (len(store.list_runs()), store.get_run(run.id).state().last_event_id)


def test_importing_the_server_module_does_not_import_the_sdk() -> None:
    import subprocess

    code = "import sys, faber_runlog._frontends.mcp_server, faber_runlog._frontends.cli; print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == out.stdout.strip()


LIFECYCLE_TOOLS = [
    "change_run_status",
    "change_step",
    "decide_approval",
    "get_report",
    "request_approval",
    "sweep_stale_runs",
]


@pytest.mark.parametrize("kind", ["local"])  # S3 over stdio: test_tools_and_resources_over_a_real_stdio_session
def test_lifecycle_tools_go_through_the_checked_transitions(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args, store = _server_command(tmp_path, kind, request)
    run = store.create_run("acme", "web")
    stale = store.create_run("acme", "web")
    stale.start()
    seen: dict[str, Any] = {}

    async def call(session: Any, tool: str, **arguments: Any) -> Any:
        return await session.call_tool(tool, {"run_id": run.id, **arguments})

    async def body(session: Any) -> None:
        seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        seen["start"] = _structured(await call(session, "change_run_status", action="start"))
        seen["pause"] = _structured(await call(session, "change_run_status", action="pause", reason="lunch"))
        seen["pause_again"] = await call(session, "change_run_status", action="pause")
        seen["typo"] = await call(session, "change_run_status", action="pasue")
        seen["resume"] = _structured(await call(session, "change_run_status", action="unpause"))
        seen["request"] = _structured(await call(session, "request_approval", gate="deploy", approval_id="dep-1"))
        seen["changes"] = _structured(
            await call(session, "decide_approval", approval_id="dep-1", action="request_changes", client_token="tok-1")
        )
        seen["replay"] = _structured(
            await call(session, "decide_approval", approval_id="dep-1", action="request_changes", client_token="tok-1")
        )
        seen["conflict"] = await call(
            session, "decide_approval", approval_id="dep-1", action="approve", client_token="tok-1"
        )
        await call(session, "emit_event", type="phase_start", phase="build")
        await call(session, "emit_event", type="step_start", phase="build", step="link")
        await call(session, "emit_event", type="step_error", phase="build", step="link", error="exit 2")
        seen["retry"] = _structured(await call(session, "change_step", action="retry_step", phase="build", step="link"))
        seen["skip"] = _structured(await call(session, "change_step", action="skip_step", phase="build", step="docs"))
        seen["dict_phase"] = await call(session, "emit_event", type="phase_start", phase={"name": "build"})
        # complete refuses open work: the retried step ends first
        await call(session, "emit_event", type="step_complete", phase="build", step="link")
        seen["complete"] = _structured(await call(session, "change_run_status", action="complete", summary="ok"))
        seen["report"] = _structured(await call(session, "get_report", write=True))
        seen["sweep"] = _structured(await session.call_tool("sweep_stale_runs", {"include_unleased": True}))

    anyio.run(_session, args, tmp_path, body)
    assert set(LIFECYCLE_TOOLS) <= set(seen["tools"])
    assert [("running", 1), ("paused", 2), ("running", 3)] == [
        (seen[k]["status"], seen[k]["event_id"]) for k in ("start", "pause", "resume")
    ]
    assert seen["pause_again"].is_error and "cannot pause run" in _text(seen["pause_again"])
    assert seen["typo"].is_error and "did you mean 'pause'" in _text(seen["typo"])
    assert ("dep-1", "awaiting_approval") == (seen["request"]["approval_id"], seen["request"]["status"])
    assert seen["changes"]["event_id"] == seen["replay"]["event_id"]  # the same token replays, never repeats
    assert seen["conflict"].is_error and "conflicts" in _text(seen["conflict"])
    assert ("step_retry", "step_skip") == (seen["retry"]["event"]["type"], seen["skip"]["event"]["type"])
    text = _text(seen["dict_phase"])
    assert "argument 'phase' must be a string, got an object" in text and "pydantic" not in text, text
    assert ("completed", "completed") == (seen["complete"]["status"], seen["report"]["status"])
    assert [stale.id] == [s["run_id"] for s in seen["sweep"]["swept"]]
    state = store.get_run(run.id).state()
    assert ("completed", "changes_requested") == (state.status, state.approvals["dep-1"].status)
    assert "failed" == store.get_run(stale.id).state().status


def test_the_python_lifecycle_over_mcp_resume_rerun_unpause_diff_and_list_filters(tmp_path: Path) -> None:
    # The server's gateway.json declares a custom type: the MCP server knows it as the CLI does.
    config = tmp_path / "gateway.json"
    deploy = {"type": "object", "required": ["metadata"], "properties": {"metadata": {"required": ["target"]}}}
    config.write_text(json.dumps({"config_version": 1, "root": "runs", "event_types": {"deploy": deploy}}))
    args, store = ["--config", str(config)], RunStore(str(tmp_path / "runs"))
    failed = store.create_run("acme", "web", params={"work_id": "220", "env": "dev"}, tags={"team": "core"})
    steps: list[tuple[str, dict[str, Any]]] = [
        ("workflow_start", {}),
        ("phase_start", {"phase": "build"}),
        ("step_start", {"phase": "build", "step": "compile"}),
        ("step_error", {"phase": "build", "step": "compile", "error": "exit 2"}),
        ("workflow_error", {"error": "exit 2"}),
    ]
    for etype, extra in steps:
        failed.log.emit(etype, **extra)
    paused = store.create_run("acme", "api", tags={"team": "ops"})
    paused.start()
    seen: dict[str, Any] = {}

    async def call(session: Any, tool: str, **arguments: Any) -> Any:
        return await session.call_tool(tool, arguments)

    async def body(session: Any) -> None:
        seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        seen["extra"] = await call(session, "emit_event", run_id=failed.id, type="step_start", phasee="build")
        seen["extra_status"] = await call(session, "change_run_status", run_id=failed.id, action="pause", why="x")
        seen["deploy"] = _structured(
            await call(session, "emit_event", run_id=paused.id, type="deploy", metadata={"target": "prod"})
        )
        seen["bad_deploy"] = await call(session, "emit_event", run_id=paused.id, type="deploy")
        seen["hint"] = await call(session, "emit_event", run_id=failed.id, type="step_start", phase="b", step="c")
        seen["resumed"] = _structured(await call(session, "resume_run", run_id=failed.id))
        seen["again"] = _structured(await call(session, "resume_run", run_id=failed.id))
        seen["pause"] = _structured(await call(session, "change_run_status", run_id=paused.id, action="pause"))
        seen["unpause"] = _structured(await call(session, "change_run_status", run_id=paused.id, action="unpause"))
        await call(session, "change_run_status", run_id=paused.id, action="pause")
        seen["alias"] = await call(session, "change_run_status", run_id=paused.id, action="resume")
        await call(session, "change_run_status", run_id=paused.id, action="unpause")
        seen["cancel"] = _structured(
            await call(session, "change_run_status", run_id=paused.id, action="cancel", reason="not needed")
        )
        seen["rerun"] = _structured(
            await call(session, "rerun_run", run_id=paused.id, params={"work_id": "221"}, tags={"team": "core"})
        )
        seen["diff"] = _structured(
            await call(session, "diff_runs", run_id=failed.id, other_run_id=seen["rerun"]["run_id"])
        )
        seen["by_params"] = _structured(await call(session, "list_runs", params={"work_id": "220"}))
        seen["by_tags"] = _structured(await call(session, "list_runs", tags={"team": "core"}, order="oldest"))
        seen["page"] = _structured(await call(session, "list_runs", limit=2))
        seen["next"] = _structured(await call(session, "list_runs", limit=2, cursor=seen["page"]["next_cursor"]))
        seen["statuses"] = _structured(await call(session, "list_runs", status=["running", "cancelled"]))

    anyio.run(_session, args, tmp_path, body)
    assert {"resume_run", "rerun_run", "diff_runs"} <= set(seen["tools"])
    assert "deploy" == seen["deploy"]["event"]["type"]
    assert seen["bad_deploy"].is_error and "target" in _text(seen["bad_deploy"])
    refused = _text(seen["extra"])
    assert seen["extra"].is_error and "emit_event takes no argument 'phasee'; it accepts: " in refused, refused
    assert "phase" in refused.split("accepts:")[1] and "type" in refused.split("accepts:")[1]
    assert seen["extra_status"].is_error and "takes no argument 'why'" in _text(seen["extra_status"])
    hint = _text(seen["hint"])
    assert "the resume_run tool" in hint and "Resumer(" not in hint and "faber-runlog" not in hint, hint
    assert ("running", "workflow_resumed", "build", "compile") == (
        seen["resumed"]["status"],
        seen["resumed"]["event"]["type"],
        seen["resumed"]["plan"]["resume_phase"],
        seen["resumed"]["plan"]["resume_step"],
    )
    assert seen["resumed"]["event_id"] == seen["again"]["event_id"]  # a second resume replays, never repeats
    assert ("paused", "running", "unpause") == (
        seen["pause"]["status"],
        seen["unpause"]["status"],
        seen["unpause"]["action"],
    )
    assert seen["alias"].is_error and "unknown action 'resume'" in _text(seen["alias"])  # no 0.x alias
    assert "cancelled" == seen["cancel"]["status"]
    child = seen["rerun"]["run_id"]
    assert (paused.id, {"work_id": "221"}) == (seen["rerun"]["parent_run_id"], seen["rerun"]["params"])
    assert {"work_id": "221"} == seen["rerun"]["diff"]["added"]
    assert {"work_id": {"old": "220", "new": "221"}} == seen["diff"]["diff"]["changed"]
    assert {"env": "dev"} == seen["diff"]["diff"]["removed"]
    assert [failed.id] == [r["run_id"] for r in seen["by_params"]["runs"]]
    assert [failed.id, child] == [r["run_id"] for r in seen["by_tags"]["runs"]]
    assert (2, 1) == (len(seen["page"]["runs"]), len(seen["next"]["runs"]))
    assert {failed.id, paused.id, child} == {r["run_id"] for r in seen["page"]["runs"] + seen["next"]["runs"]}
    assert {failed.id: "running", paused.id: "cancelled"} == {
        r["run_id"]: r["status"] for r in seen["statuses"]["runs"]
    }
    assert "running" == store.get_run(failed.id).state().status


@pytest.mark.parametrize(
    ("tool", "arguments", "status"),
    [
        ("change_run_status", {"action": "cancel", "reason": "stop"}, "cancelled"),
        ("emit_event", {"type": "workflow_complete"}, "completed"),
    ],
)
def test_a_tool_that_ends_a_run_whose_archive_is_missing_says_so_and_leaves_it_unsealed(
    tmp_path: Path, s3_server: S3Server, tool: str, arguments: dict[str, Any], status: str
) -> None:
    from mcp.server.mcpserver.exceptions import ToolError

    from faber_runlog._frontends.mcp_server import build_server
    from faber_runlog._services.archive import is_consolidated
    from faber_runlog._services.gateway import Gateway, GatewayConfig, S3ArchiveConfig

    options = {k: v for k, v in s3_server.storage_options.items() if k not in ("key", "secret")}
    archive = S3ArchiveConfig(enabled=True, bucket=f"no-such-bucket-{uuid.uuid4().hex[:12]}", storage_options=options)
    gateway = Gateway(GatewayConfig(root=str(tmp_path / "runs"), s3_archive=archive))
    run = gateway.store.create_run("acme", "web")
    run.start()
    server = build_server(gateway)

    async def call() -> Any:
        return await server.call_tool(tool, {"run_id": run.id, **arguments})

    with pytest.raises(ToolError) as caught:
        anyio.run(call)

    text = str(caught.value)
    assert f"run {run.id}" in text and "was recorded as event 2" in text, text
    assert "not sealed" in text and f"faber-runlog archive {run.id}" in text
    assert status == run.state().status and not is_consolidated(gateway.store, run.id)
