"""The MCP event gateway: tools and resources over stdio (the ``faber_runlog[mcp]`` extra, mcp SDK 2.x).

Start it with ``faber-runlog mcp``. Tools: ``emit_event``, ``create_run``,
``get_state``, ``list_events``, ``list_runs``, ``resume_plan``. Resources:
``faber://run/{run_id}/state``, ``faber://run/{run_id}/events`` and
``faber://runs/list`` (the run id's slashes may be sent as they are or as
``%2F``). FABER's gateway tools (``fractary_faber_*``) and ``faber://runs``
URIs are served too (see ``_faber_mcp.py``). Bad input (a malformed run id, an event that fails its schema, a
missing run) comes back as a tool error carrying the validation message; the
server keeps running. The SDK is imported only when a server is built.
"""

from __future__ import annotations

from typing import Any, Final

from faber_runlog._version import __version__
from faber_runlog.errors import FaberRunlogError, MissingExtra
from faber_runlog.gateway import Gateway

__all__ = ["build_server", "serve"]

_MAX_EVENTS: Final = 1000
_INSTRUCTIONS: Final = (
    "faber-runlog records workflow runs as append-only event logs. Create a run with create_run, record what "
    "happens with emit_event (types such as workflow_start, phase_start, step_start, step_complete, step_error), "
    "read the folded state with get_state and ask where a failed run would resume with resume_plan."
)


def _sdk() -> tuple[Any, type[Exception], type[Exception]]:
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ResourceError, ToolError
    except ImportError as e:
        raise MissingExtra(
            f"the MCP server needs the mcp SDK 2.x ({e}); install it with: pip install 'faber_runlog[mcp]'"
        ) from e
    return MCPServer, ToolError, ResourceError


def build_server(gateway: Gateway) -> Any:
    """An ``MCPServer`` exposing ``gateway``'s store; call ``.run("stdio")`` on it (or use :func:`serve`)."""
    from faber_runlog import _codec
    from faber_runlog._converter import converter
    from faber_runlog.resume import Resumer

    server_cls, tool_error, resource_error = _sdk()
    server = server_cls(name="faber-runlog", version=__version__, instructions=_INSTRUCTIONS, log_level="WARNING")

    def refused(e: Exception, error: type[Exception]) -> Exception:
        return error(" ".join(str(e).split()) or type(e).__name__)

    def state_of(run_id: str, at: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = gateway.store.get_run(run_id).state(at=at).to_dict()
        return body

    def events_of(run_id: str, since: int, limit: int, types: list[str] | None) -> dict[str, Any]:
        if since < 0 or not 1 <= limit <= _MAX_EVENTS:
            raise ValueError(f"since must be >= 0 and limit between 1 and {_MAX_EVENTS} (got {since}, {limit})")
        run = gateway.store.get_run(run_id)
        events = [e.to_dict() for e in run.log.read(since, types=types, limit=limit)]
        last = events[-1]["event_id"] if events else since
        return {"run_id": run.id, "events": events, "next_since": last}

    def runs(org: str | None, project: str | None, status: str | None, limit: int) -> dict[str, Any]:
        found = gateway.store.list_runs(org=org, project=project, status=status)
        shown = found[-limit:] if limit > 0 else []
        return {"runs": [converter.unstructure(r) for r in shown], "total": len(found)}

    def emit_event(
        run_id: str,
        type: str,
        phase: str | None = None,
        step: str | None = None,
        status: str | None = None,
        message: str | None = None,
        error: str | None = None,
        duration_ms: float | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        try:
            event = gateway.emit(
                run_id, type, phase=phase, step=step, status=status, message=message, error=error,
                duration_ms=duration_ms, metadata=metadata, idempotency_key=idempotency_key,
            )  # fmt: skip
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, tool_error) from e
        if event is None:
            return {"written": False, "reason": "logging is disabled in gateway.json"}
        return {"written": True, "event_id": event.event_id, "event": event.to_dict()}

    def create_run(
        org: str, project: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            run = gateway.new_run(org, project, params, tags)
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, tool_error) from e
        if run is None:
            return {"written": False, "reason": "logging is disabled in gateway.json"}
        return {"written": True, "run_id": run.id}

    def get_state(run_id: str, at: int | None = None) -> dict[str, Any]:
        try:
            return state_of(run_id, at)
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, tool_error) from e

    def list_events(run_id: str, since: int = 0, limit: int = 100, types: list[str] | None = None) -> dict[str, Any]:
        try:
            return events_of(run_id, since, limit, types)
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, tool_error) from e

    def list_runs(
        org: str | None = None, project: str | None = None, status: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        try:
            return runs(org, project, status, limit)
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, tool_error) from e

    def resume_plan(run_id: str, allow_cancelled: bool = False) -> dict[str, Any]:
        try:
            plan: dict[str, Any] = Resumer(gateway.store).plan(run_id, allow_cancelled=allow_cancelled).to_dict()
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, tool_error) from e
        return plan

    def state_resource(run_id: str) -> str:
        try:
            return _codec.dumps(state_of(run_id)).decode()
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, resource_error) from e

    def events_resource(run_id: str) -> str:
        try:
            return _codec.dumps(events_of(run_id, 0, _MAX_EVENTS, None)).decode()
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, resource_error) from e

    def runs_resource() -> str:
        try:
            return _codec.dumps(runs(None, None, None, 10_000)).decode()
        except (FaberRunlogError, ValueError, LookupError) as e:
            raise refused(e, resource_error) from e

    tools = {
        emit_event: "Append one event to a run (validated against its JSON Schema); returns the event.",
        create_run: "Create a run in org/project with optional params and tags; returns its run_id.",
        get_state: "The run's state folded from its events (or as it was right after event `at`).",
        list_events: "A run's events after `since`, oldest first, at most `limit` (max 1000).",
        list_runs: "Runs in the store, oldest first (the newest `limit`); filter by org, project, status.",
        resume_plan: "Where a resume of the run would start and what it would skip, or why it cannot.",
    }
    for fn, description in tools.items():
        server.add_tool(fn, description=description)
    resources = {
        "faber://run/{+run_id}/state": ("run-state", "The folded state of a run.", state_resource),
        "faber://run/{+run_id}/events": (
            "run-events", "Every event of a run, oldest first (at most 1000; use list_events to page).", events_resource
        ),
        "faber://runs/list": ("runs", "Every run in the store, oldest first.", runs_resource),
    }
    for uri, (name, description, fn) in resources.items():
        server.resource(uri, name=name, description=description, mime_type="application/json")(fn)
    from faber_runlog._faber_mcp import register as register_faber

    register_faber(server, gateway, resource_error)  # FABER's own tool names and faber://runs URIs
    return server


def serve(gateway: Gateway) -> None:
    """Serve ``gateway`` over stdio until the client disconnects."""
    build_server(gateway).run("stdio")
