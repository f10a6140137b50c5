"""The MCP event gateway: tools and resources over stdio (the ``faber_runlog[mcp]`` extra, mcp SDK 2.x).

Start it with ``faber-runlog mcp``. Tools: ``emit_event``, ``create_run``,
``get_state``, ``list_events``, ``list_runs`` (the RunQuery filters), ``resume_plan``, and the lifecycle
tools ``change_run_status``, ``change_step``, ``request_approval``,
``decide_approval``, ``sweep_stale_runs``, ``get_report``, ``resume_run``, ``rerun_run`` and ``diff_runs``.
Unknown arguments are refused naming the accepted ones; advice in errors names tools. Resources:
``faber://run/{run_id}/state``, ``faber://run/{run_id}/events`` and
``faber://runs/list`` (the run id's slashes may be sent as they are or as
``%2F``). FABER's gateway tools (``fractary_faber_*``) and ``faber://runs``
URIs are served too (see ``_frontends/faber_mcp.py``). Bad input (a malformed run id, an event that fails its schema, a
missing run) comes back as a tool error carrying the validation message; the
server keeps running. The SDK is imported only when a server is built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

from faber_runlog._base.advice import advice
from faber_runlog._domain.hints import check_status_filter
from faber_runlog._frontends import actions as _actions
from faber_runlog._services.gateway import BackendFailure, Gateway
from faber_runlog._version import __version__
from faber_runlog.errors import FaberRunlogError, InvalidArgument, MissingExtra

__all__ = ["build_server", "serve"]

F = TypeVar("F", bound=Callable[..., Any])

_MAX_EVENTS: Final = 1000
_INSTRUCTIONS: Final = (
    "faber-runlog records workflow runs as append-only event logs. Create a run with create_run, record what "
    "happens with emit_event (types such as workflow_start, phase_start, step_start, step_complete, step_error), "
    "read the folded state with get_state, ask where a failed run would resume with resume_plan, go on with it "
    "with resume_run, or start a new run from it with rerun_run (new params). A paused run goes on with "
    "change_run_status action 'unpause'."
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


def _recorded_but(tool_error: type[Exception], failures: list[BackendFailure]) -> None:
    """A tool error when a backend (the auto-archive) failed on an event already recorded: the event stands.

    The result is an error, as the CLI exits 1, so the agent sees it; its text names the run, says the
    event was recorded (do not send it again) and what to do (``faber-runlog archive RUN_ID``).
    """
    if failures:
        said = " ".join(f"{f.message()}." for f in failures)
        raise tool_error(f"{said} The event stands: do not send it again.")


def in_tool_terms(e: BaseException) -> str:
    """``e``'s message on one line, its advice naming MCP tools rather than Python calls or CLI commands."""
    return advice(e, "mcp") or type(e).__name__


def _refusing(error: type[Exception]) -> Callable[[F], F]:
    """A tool or resource function whose :class:`FaberRunlogError` reaches the client as ``error`` (the server runs on).

    ``functools.wraps`` keeps the signature the SDK reads to build the tool's input schema.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def refusing(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except FaberRunlogError as e:
                raise error(in_tool_terms(e)) from e

        return cast(F, refusing)

    return decorate


def build_server(gateway: Gateway) -> Any:  # noqa: C901  (registers each tool as a closure; their branches count here)
    """An ``MCPServer`` exposing ``gateway``'s store; call ``.run("stdio")`` on it (or use :func:`serve`)."""
    from faber_runlog._base import codec as _codec
    from faber_runlog._base.converter import converter
    from faber_runlog._services.resume import Resumer

    server_cls, tool_error, resource_error = _sdk()
    server = _plain_errors(server_cls, tool_error)(
        name="faber-runlog", version=__version__, instructions=_INSTRUCTIONS, log_level="WARNING"
    )

    as_tool_error, as_resource_error = _refusing(tool_error), _refusing(resource_error)

    def state_of(run_id: str, at: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = gateway.store.get_run(run_id).state(at=at).to_dict()
        return body

    def events_of(run_id: str, since: int, limit: int, types: list[str] | None) -> dict[str, Any]:
        if since < 0 or not 1 <= limit <= _MAX_EVENTS:
            raise InvalidArgument(f"since must be >= 0 and limit between 1 and {_MAX_EVENTS} (got {since}, {limit})")
        run = gateway.store.get_run(run_id)
        events = [e.to_dict() for e in run.log.read(since, types=types, limit=limit)]
        last = events[-1]["event_id"] if events else since
        return {"run_id": run.id, "events": events, "next_since": last}

    def runs(
        org: str | None, project: str | None, status: str | list[str] | None, limit: int, **query: Any
    ) -> dict[str, Any]:
        # One status is checked here (with its close matches); a list goes to RunQuery's own check.
        wanted: Any = check_status_filter(status) if isinstance(status, str) or status is None else status
        found = gateway.store.list_runs(
            org=org, project=project, status=wanted, limit=limit, **{k: v for k, v in query.items() if v is not None}
        )
        return {
            "runs": [converter.unstructure(r) for r in found],
            "total": len(found),
            "next_cursor": found.next_cursor,
            "problems": [converter.unstructure(p) for p in found.problems],
        }

    @as_tool_error
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
        failures: list[BackendFailure] = []
        event = _actions.emit(
            gateway,
            run_id,
            type,
            failures=failures,
            phase=phase,
            step=step,
            status=status,
            message=message,
            error=error,
            duration_ms=duration_ms,
            metadata=metadata,
            idempotency_key=idempotency_key,
        )
        if event is None:
            return {"written": False, "reason": "logging is disabled in gateway.json"}
        _recorded_but(tool_error, failures)
        return {"written": True, "event_id": event.event_id, "event": event.to_dict()}

    @as_tool_error
    def create_run(
        org: str, project: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        run = gateway.new_run(org, project, params, tags)
        if run is None:
            return {"written": False, "reason": "logging is disabled in gateway.json"}
        return {"written": True, "run_id": run.id}

    @as_tool_error
    def get_state(run_id: str, at: int | None = None) -> dict[str, Any]:
        return state_of(run_id, at)

    @as_tool_error
    def list_events(run_id: str, since: int = 0, limit: int = 100, types: list[str] | None = None) -> dict[str, Any]:
        return events_of(run_id, since, limit, types)

    @as_tool_error
    def list_runs(
        org: str | None = None,
        project: str | None = None,
        status: str | list[str] | None = None,
        limit: int = 100,
        run_ids: list[str] | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        since: str | None = None,
        until: str | None = None,
        ended_since: str | None = None,
        ended_until: str | None = None,
        order: str | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        return runs(
            org,
            project,
            status,
            limit,
            run_ids=run_ids,
            tags=tags,
            params=params,
            since=since,
            until=until,
            ended_since=ended_since,
            ended_until=ended_until,
            order=order,
            cursor=cursor,
        )

    @as_tool_error
    def resume_plan(run_id: str, *, allow_cancelled: bool = False) -> dict[str, Any]:
        plan: dict[str, Any] = Resumer(gateway.store).plan(run_id, allow_cancelled=allow_cancelled).to_dict()
        return plan

    @as_resource_error
    def state_resource(run_id: str) -> str:
        return _codec.dumps(state_of(run_id)).decode()

    @as_resource_error
    def events_resource(run_id: str) -> str:
        return _codec.dumps(events_of(run_id, 0, _MAX_EVENTS, None)).decode()

    @as_resource_error
    def runs_resource() -> str:
        return _codec.dumps(runs(None, None, None, 10_000, order="oldest")).decode()

    tools = {
        emit_event: "Append one event to a run (validated against its JSON Schema); returns the event.",
        create_run: "Create a run in org/project with optional params and tags; returns its run_id.",
        get_state: "The run's state folded from its events (or as it was right after event `at`).",
        list_events: "A run's events after `since`, oldest first, at most `limit` (max 1000).",
        list_runs: "Runs in the store, newest first (order='oldest' for oldest first), at most `limit`; filter by "
        "org, project, status (one or a list), run_ids, tags, params, since/until (creation time, ISO 8601); "
        "pass the answer's next_cursor as `cursor` for the next page.",
        resume_plan: "Where a resume of the run would start and what it would skip, or why it cannot.",
    }
    for fn, description in tools.items():
        server.add_tool(fn, description=description)
    _add_lifecycle_tools(server, gateway, tool_error)
    resources = {
        "faber://run/{+run_id}/state": ("run-state", "The folded state of a run.", state_resource),
        "faber://run/{+run_id}/events": (
            "run-events",
            "Every event of a run, oldest first (at most 1000; use list_events to page).",
            events_resource,
        ),
        "faber://runs/list": ("runs", "Every run in the store, oldest first.", runs_resource),
    }
    for uri, (name, description, fn) in resources.items():
        server.resource(uri, name=name, description=description, mime_type="application/json")(fn)
    from faber_runlog._frontends.faber_mcp import register as register_faber

    register_faber(server, gateway, resource_error)  # FABER's own tool names and faber://runs URIs
    return server


# -- argument errors in our words ---------------------------------------------------------------

_KINDS: Final = {
    "string": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
    "dict": "an object", "list": "a list", "none": "null", "literal": "one of the listed values",
}  # fmt: skip  # a table: one row per line


def _argument_problem(tool: str, err: Mapping[str, Any]) -> str:
    """One pydantic argument error as a sentence naming the argument and what it must be."""
    loc = [str(p) for p in err.get("loc", ()) if not str(p).endswith("Arguments")]
    name = ".".join(loc) or "arguments"
    problem = str(err.get("type", ""))
    if problem == "missing":
        return f"{tool} needs the argument {name!r}"
    if problem == "extra_forbidden":
        return f"{tool} takes no argument {name!r}"
    got = type(err.get("input")).__name__
    got = {"dict": "an object", "list": "a list", "str": "a string", "NoneType": "null"}.get(got, f"a {got}")
    wanted = next((words for key, words in _KINDS.items() if problem.startswith(key)), None)
    if wanted is not None:
        return f"{tool}: argument {name!r} must be {wanted}, got {got}"
    return f"{tool}: argument {name!r} is invalid ({str(err.get('msg', problem)).lower()})"


def _plain_errors(server_cls: Any, tool_error: type[Exception]) -> Any:
    """``server_cls`` whose tools refuse bad arguments in our words, not pydantic's (no links, no model names)."""
    from pydantic import ValidationError

    class Server(server_cls):  # type: ignore[misc]  # mcp is untyped here: the base is Any
        async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
            tool = self._tool_manager.get_tool(name)
            if tool is not None:
                accepted = sorted((tool.parameters or {}).get("properties", {}))
                unknown = sorted(set(arguments or {}) - set(accepted))
                if unknown:
                    raise tool_error(
                        f"{name} takes no argument{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; it accepts: {', '.join(accepted) or 'no arguments'}. "
                        "Nothing was written."
                    )
            try:
                return await super().call_tool(name, arguments, context)
            except tool_error as e:
                cause = e.__cause__
                if not isinstance(cause, ValidationError):
                    raise
                problems = "; ".join(_argument_problem(name, err) for err in cause.errors())
                raise tool_error(f"{problems}. Nothing was written; see the tool's input schema.") from None

    return Server


# -- lifecycle tools: every checked transition and approval decision ------------------------------


def _add_lifecycle_tools(server: Any, gateway: Gateway, tool_error: type[Exception]) -> None:
    """Tools that change a run's status through the same checked ``Run`` methods as Python code."""
    as_tool_error = _refusing(tool_error)
    from faber_runlog._domain.events import Event

    def written(
        run_id: str, action: str, event: Event | None, failures: list[BackendFailure] | None = None
    ) -> dict[str, Any]:
        if event is None:
            return {"written": False, "reason": "logging is disabled in gateway.json"}
        _recorded_but(tool_error, failures or [])
        status = gateway.store.get_run(run_id).state().status
        return {
            "written": True,
            "action": action,
            "event_id": event.event_id,
            "status": status,
            "event": event.to_dict(),
        }

    @as_tool_error
    def change_run_status(
        run_id: str, action: str, reason: str | None = None, summary: str | None = None, error: str | None = None
    ) -> dict[str, Any]:
        failures: list[BackendFailure] = []
        event = _actions.perform(
            gateway,
            run_id,
            action,
            among=_actions.RUN_ACTIONS,
            failures=failures,
            reason=reason,
            summary=summary,
            error=error,
        )
        return written(run_id, action, event, failures)

    @as_tool_error
    def change_step(
        run_id: str, action: str, phase: str, step: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        failures: list[BackendFailure] = []
        event = _actions.perform(
            gateway,
            run_id,
            action,
            among=_actions.STEP_ACTIONS,
            failures=failures,
            phase=phase,
            step=step,
            reason=reason,
        )
        return written(run_id, action, event, failures)

    @as_tool_error
    def request_approval(
        run_id: str,
        gate: str,
        phase: str | None = None,
        payload: dict[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> dict[str, Any]:
        failures: list[BackendFailure] = []
        event = _actions.request_approval(
            gateway, run_id, gate, phase=phase, payload=payload, approval_id=approval_id, failures=failures
        )
        body = written(run_id, "request_approval", event, failures)
        if event is not None:
            body["approval_id"] = event.metadata["approval_id"]
        return body

    @as_tool_error
    def decide_approval(
        run_id: str,
        approval_id: str,
        action: str,
        client_token: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        failures: list[BackendFailure] = []
        event = _actions.decide(
            gateway,
            run_id,
            approval_id,
            action,
            client_token=client_token,
            comment=comment,
            user=user,
            failures=failures,
        )
        return written(run_id, action, event, failures)

    @as_tool_error
    def sweep_stale_runs(
        older_than: float = 0.0, run_ids: list[str] | None = None, *, include_unleased: bool = False
    ) -> dict[str, Any]:
        if not gateway.enabled:
            return {"written": False, "reason": "logging is disabled in gateway.json", "swept": []}
        swept = gateway.store.sweep_stale(older_than, run_ids=run_ids, include_unleased=include_unleased)
        return {"written": bool(swept), "swept": [x.to_dict() for x in swept]}

    @as_tool_error
    def get_report(run_id: str, *, write: bool = False) -> dict[str, Any]:
        from faber_runlog._domain.state import TERMINAL_STATUSES
        from faber_runlog._services.report import compose_report

        run = gateway.store.get_run(run_id)
        if write:
            status = run.state().status
            if status not in TERMINAL_STATUSES:
                raise InvalidArgument(
                    f"run {run.id} is {status}: its final report is written when it ends; "
                    "call without write to see the report so far"
                )
            report: dict[str, Any] = run.write_report()
        else:
            report = run.read_report() or compose_report(gateway.store.storage, run.log)
        return report

    tools = {
        change_run_status: "Change a run's status through its checked transitions: action is start, pause, unpause "
        "(a paused run; after a failure, call resume_run), cancel, complete or fail (fail needs `error`). Refused, "
        "with the reason, when the run's status does not allow it; nothing is written then.",
        change_step: "Retry or skip a step or phase: action is retry_step, skip_step (need `step`), retry_phase or "
        "skip_phase.",
        request_approval: "Open an approval gate on a running run; returns its approval_id. The same approval_id "
        "again returns the stored request.",
        decide_approval: "Decide an approval: action is approve, reject, request_changes or abort. client_token "
        "makes a retry safe: the same token and action return the stored decision.",
        sweep_stale_runs: "Fail active runs whose writer's lease expired `older_than` seconds ago or more.",
        get_report: "The run's report (the stored final report, or one composed now); write=true writes "
        "report.json and report.md for an ended run.",
    }
    for fn, description in tools.items():
        server.add_tool(fn, description=description)
    _add_resume_tools(server, gateway, tool_error, written)


def _add_resume_tools(
    server: Any, gateway: Gateway, tool_error: type[Exception], written: Callable[..., dict[str, Any]]
) -> None:
    """Resume after a failure, re-run with new parameters, and compare two runs' parameters."""
    as_tool_error = _refusing(tool_error)
    from faber_runlog._services.resume import Resumer

    @as_tool_error
    def resume_run(run_id: str, *, allow_cancelled: bool = False) -> dict[str, Any]:
        done = _actions.resume(gateway, run_id, allow_cancelled=allow_cancelled)
        if done is None:
            return {"written": False, "reason": "logging is disabled in gateway.json"}
        run, plan, event = done
        body = written(run.id, "resume", event)
        body["plan"] = plan.to_dict()
        return body

    @as_tool_error
    def rerun_run(
        run_id: str,
        params: dict[str, Any] | None = None,
        mode: str = "all",
        from_event: int | None = None,
        tags: dict[str, str | None] | None = None,
    ) -> dict[str, Any]:
        child = _actions.rerun(gateway, run_id, params, mode=mode, from_event=from_event, tags=tags)
        if child is None:
            return {"written": False, "reason": "logging is disabled in gateway.json"}
        meta = child.metadata
        return {
            "written": True,
            "run_id": child.id,
            "parent_run_id": meta.parent_run_id,
            "params": meta.params,
            "diff": Resumer(gateway.store).diff(run_id, child.id).to_dict(),
        }

    @as_tool_error
    def diff_runs(run_id: str, other_run_id: str) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "other_run_id": other_run_id,
            "diff": Resumer(gateway.store).diff(run_id, other_run_id).to_dict(),
        }

    tools = {
        resume_run: "Go on with a failed or stopped run under the same run id (appends workflow_resumed); returns "
        "the resume plan: where to start and which completed steps to skip. See resume_plan to only look.",
        rerun_run: "Start a new run from a finished one with `params` merged over its parameters (null removes a "
        "key); mode 'all' starts fresh, 'from_failure' skips completed steps; returns the new run_id and the diff.",
        diff_runs: "The parameters added, removed and changed between two runs.",
    }
    for fn, description in tools.items():
        server.add_tool(fn, description=description)


def serve(gateway: Gateway) -> None:
    """Serve ``gateway`` over stdio until the client disconnects."""
    build_server(gateway).run("stdio")
