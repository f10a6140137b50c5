"""FABER's MCP gateway tools and resources, served by ``faber-runlog mcp`` next to ours.

A client written for FABER's gateway calls ``fractary_faber_event_emit``,
``fractary_faber_run_get``, ``fractary_faber_run_list`` and
``fractary_faber_event_consolidate`` with FABER's argument names and reads
FABER's result fields (``status``, ``operation``, ...) and resources
(``faber://runs``, ``faber://runs/{run_id}``, ``faber://runs/{run_id}/events``).
Like FABER's gateway, a refused call answers ``{"status": "error", "error": ...}``
instead of failing the call. Run statuses use FABER's words (``pending``,
``in_progress``); a plan-based FABER run id is resolved to the run it was
imported as.
"""

from __future__ import annotations

from typing import Any, Final

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advice
from faber_runlog._domain.registry import event_types_table
from faber_runlog._faber.convert import (
    FABER_EVENT_TYPES,
    FABER_PHASES,
    faber_event,
    faber_metadata,
    faber_phase_status,
    faber_run_status,
    faber_state,
    mapped_run_id,
    runlog_event_fields,
    runlog_statuses,
)
from faber_runlog._format.layout import RunLayout
from faber_runlog._frontends.actions import emit, perform
from faber_runlog._services.gateway import BackendFailure, Gateway
from faber_runlog._services.store import Run
from faber_runlog.errors import FaberRunlogError, InvalidEvent

__all__ = ["FABER_TOOLS", "register"]

FABER_TOOLS: Final = (
    "fractary_faber_event_emit",
    "fractary_faber_run_get",
    "fractary_faber_run_list",
    "fractary_faber_event_consolidate",
    "fractary_faber_workflow_status",
    "fractary_faber_workflow_pause",
    "fractary_faber_workflow_resume",
    "fractary_faber_workflow_recover",
    "fractary_faber_workflow_cleanup",
)
_RESOURCE_LIMIT: Final = 100  # what FABER's gateway lists under faber://runs
_REFUSED: Final = (FaberRunlogError, ValueError, LookupError, OSError)


def _message(e: BaseException) -> str:
    """``e``'s message on one line, its advice naming MCP tools (as the server's own tools word it)."""
    return advice(e, "mcp") or type(e).__name__


_EMIT_FIELDS: Final = frozenset(
    {
        "phase",
        "step",
        "status",
        "message",
        "duration_ms",
        "error",
        "artifacts",
        "metadata",
        "user",
        "source",
        "idempotency_key",
    }
)
"""The fields :meth:`EventLog.emit` takes besides the type: all a converted FABER event may pass on."""


def register(server: Any, gateway: Gateway, resource_error: type[Exception]) -> None:  # noqa: C901  (registers each tool as a closure; their branches count here)
    """Add FABER's four tools and three resource URIs to ``server`` (an SDK ``MCPServer``)."""
    store = gateway.store

    def open_run(run_id: str) -> Run:
        # Our ids as they are; a plan-based FABER id names the run it was imported as.
        return store.get_run(mapped_run_id(run_id))

    def emit_error(run_id: str, etype: str | None, error: str) -> dict[str, Any]:
        return {
            "status": "error",
            "operation": "emit-event",
            "event_id": 0,
            "type": etype or "workflow_error",
            "run_id": run_id,
            "timestamp": _codec.now_iso(),
            "event_path": "",
            "error": error,
        }

    def fractary_faber_event_emit(
        run_id: str,
        type: str,
        phase: str | None = None,
        step: str | None = None,
        status: str | None = None,
        message: str | None = None,
        metadata: dict[str, Any] | None = None,
        artifacts: list[dict[str, Any]] | None = None,
        duration_ms: float | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "phase": phase,
            "step": step,
            "status": status,
            "message": message,
            "metadata": metadata,
            "artifacts": artifacts,
            "duration_ms": duration_ms,
            "error": error,
        }
        failures: list[BackendFailure] = []
        try:
            run = open_run(run_id)
            try:
                event = emit(gateway, run.id, type, failures=failures, **fields)
            except InvalidEvent:
                if type not in FABER_EVENT_TYPES:
                    raise  # FABER refuses an unknown type name too
                # FABER checks only the type name: keep what our schema refuses, as the importer does.
                raw = {"type": type, **{k: v for k, v in fields.items() if v is not None}}
                converted, _, _ = runlog_event_fields(
                    raw, run_id=run.id, default_user=None, types=event_types_table(gateway.store.registry)
                )
                # Only what a producer may set: fields an export restores (lease_epoch, nonce, ...) are the log's own.
                kept = {k: v for k, v in converted.items() if k in _EMIT_FIELDS}
                event = emit(gateway, run.id, converted["type"], failures=failures, **kept)
        except _REFUSED as e:
            return emit_error(run_id, type, _message(e))
        if event is None:
            return {
                **emit_error(run_id, type, "logging is disabled in gateway.json; nothing was written"),
                "status": "success",
                "written": False,
            }
        body: dict[str, Any] = {
            "status": "success",
            "operation": "emit-event",
            "event_id": event.event_id,
            "type": type,
            "run_id": run_id,
            "timestamp": event.timestamp,
            "event_path": store.storage.path(RunLayout(run.run_id).event(event.event_id)),
        }
        if event.type != type:  # kept, but not as the type asked for: the caller must not believe otherwise
            body["stored_type"] = event.type
            body["warning"] = (
                f"stored as {event.type!r}, not {type!r}: faber_runlog's schema for {type!r} refuses these fields "
                f"(the FABER type and fields are kept in metadata._faber); it does not change the run's state as a "
                f"{type!r} would"
            )
        if failures:  # recorded, but the auto-archive (or another backend) failed on it: say so and what to do
            body["backend_errors"] = [f.message() for f in failures]
            body["warning"] = " ".join([body.get("warning", ""), *body["backend_errors"]]).strip()
        return body

    def get_run(run_id: str, *, include_events: bool) -> dict[str, Any]:
        try:
            run = open_run(run_id)
            state = run.state()
            body: dict[str, Any] = {
                "status": "success",
                "operation": "get-run",
                "run_id": run_id,
                "metadata": faber_metadata(run),
                "state": faber_state(run, state),
            }
            if include_events:
                body["event_count"] = state.last_event_id
            return body
        except _REFUSED as e:
            return {
                "status": "error",
                "operation": "get-run",
                "run_id": run_id,
                "metadata": None,
                "state": None,
                "error": _message(e),
            }

    def fractary_faber_run_get(run_id: str, *, include_events: bool = False) -> dict[str, Any]:
        return get_run(run_id, include_events=include_events)

    def list_runs(
        work_id: str | None, status: str | None, org: str | None, project: str | None, limit: int
    ) -> dict[str, Any]:
        try:
            found = store.list_runs(org=org, project=project)
        except _REFUSED as e:
            return {"status": "error", "operation": "list-runs", "runs": [], "total": 0, "error": _message(e)}
        wanted = set(runlog_statuses(status)) if status else None
        rows: list[dict[str, Any]] = []
        for r in found:
            if wanted is not None and r.status not in wanted:
                continue
            wid = r.params.get("work_id")
            if work_id is not None and (wid is None or str(wid) != str(work_id)):
                continue
            terminal = r.status in ("completed", "failed", "cancelled")
            rows.append(
                {
                    "run_id": r.run_id,
                    "work_id": "" if wid is None else str(wid),
                    "status": faber_run_status(r.status),
                    "created_at": r.created_at,
                    "updated_at": r.updated_at or r.created_at,
                    "completed_at": r.updated_at if terminal else None,
                    "current_phase": r.current_phase,
                }
            )
        rows.sort(key=lambda row: str(row["created_at"]), reverse=True)  # newest first, as FABER lists them
        return {"status": "success", "operation": "list-runs", "runs": rows[: max(0, int(limit))], "total": len(rows)}

    def fractary_faber_run_list(
        work_id: str | None = None,
        status: str | None = None,
        org: str | None = None,
        project: str | None = None,
        limit: float = 20,
    ) -> dict[str, Any]:
        try:
            count = int(min(_validate.number(limit, "limit", minimum=0), 1_000_000))
        except FaberRunlogError as e:
            return {"status": "error", "operation": "list-runs", "runs": [], "total": 0, "error": _message(e)}
        return list_runs(work_id, status, org, project, count)

    def fractary_faber_event_consolidate(run_id: str) -> dict[str, Any]:
        from faber_runlog._services.archive import consolidate

        try:
            run = open_run(run_id)
            record = consolidate(store, run.id)
        except _REFUSED as e:
            return {
                "status": "error",
                "operation": "consolidate-events",
                "run_id": run_id,
                "events_consolidated": 0,
                "output_path": "",
                "size_bytes": 0,
                "error": _message(e),
            }
        return {
            "status": "success",
            "operation": "consolidate-events",
            "run_id": run_id,
            "events_consolidated": record.count,
            "output_path": store.storage.path(RunLayout(run.run_id).jsonl),
            "size_bytes": record.size,
        }

    def workflow_error(operation: str, error: str) -> dict[str, Any]:
        return {"status": "error", "operation": operation, "error": error}

    def find_run(workflow_id: str | None, work_id: str | None) -> Run:
        if workflow_id:
            return open_run(workflow_id)
        if work_id:
            found = [r for r in store.list_runs() if str(r.params.get("work_id", "")) == str(work_id)]
            active = [r for r in found if r.status not in ("completed", "failed", "cancelled")] or found
            if active:
                return store.get_run(max(active, key=lambda r: r.created_at).run_id)
            raise LookupError(f"no run for work item {work_id!r}; list runs with fractary_faber_run_list")
        raise LookupError("No workflow_id or work_id provided")

    def workflow_result(run: Run) -> dict[str, Any]:
        """FABER's WorkflowResult shape for one of our runs (workflow_id is the run id)."""
        state = run.state()
        phases = [
            {"phase": p.name, "status": faber_phase_status(p.status), "duration_ms": 0}
            for p in state.phases.values()
            if p.status in ("completed", "failed", "skipped")
        ]
        return {
            "workflow_id": run.id,
            "work_id": str(run.metadata.params.get("work_id", "")),
            "status": faber_run_status(state.status),
            "run_status": state.status,
            "phases": phases,
            "duration_ms": 0,
            "artifacts": [{"path": a.path, "kind": a.kind} for a in state.artifacts],
        }

    def fractary_faber_workflow_status(workflow_id: str | None = None, work_id: str | None = None) -> dict[str, Any]:
        try:
            run = find_run(workflow_id, work_id)
            state = run.state()
        except _REFUSED as e:
            return workflow_error("workflow_status", _message(e))
        done = sum(1 for p in FABER_PHASES if p in state.phases and state.phases[p].status in ("completed", "skipped"))
        return {
            "state": faber_state(run, state),
            "currentPhase": state.current_phase or "",
            "progress": round(done / len(FABER_PHASES) * 100),
        }

    def fractary_faber_workflow_pause(workflow_id: str) -> dict[str, Any]:
        try:
            run = open_run(workflow_id)
            perform(gateway, run.id, "pause", reason="paused through fractary_faber_workflow_pause")
        except _REFUSED as e:
            return workflow_error("workflow_pause", _message(e))
        return {"status": "success", "workflow_id": workflow_id, "message": "Workflow paused"}

    def fractary_faber_workflow_resume(workflow_id: str) -> dict[str, Any]:
        from faber_runlog._services.resume import Resumer

        try:
            run = open_run(workflow_id)
            if run.state().status == "paused":
                perform(gateway, run.id, "unpause", reason="resumed through fractary_faber_workflow_resume")
            else:
                Resumer(store).resume(run.id)
        except _REFUSED as e:
            return workflow_error("workflow_resume", _message(e))
        return workflow_result(store.get_run(run.id))

    def fractary_faber_workflow_recover(
        workflow_id: str,
        checkpoint_id: str | None = None,
        from_phase: str | None = None,
        skip_phases: list[str] | None = None,
    ) -> dict[str, Any]:
        from faber_runlog._services.resume import Resumer

        try:
            run = open_run(workflow_id)
            resumer = Resumer(store)
            plan = resumer.plan(run.id)
            if from_phase is not None and plan.resume_phase not in (None, from_phase):
                return workflow_error(
                    "workflow_recover",
                    f"run {run.id} resumes at phase {plan.resume_phase!r} (the first phase its log has not "
                    f"completed), not {from_phase!r}; nothing was written; re-run it instead to start elsewhere",
                )
            resumer.resume(run.id)
        except _REFUSED as e:
            return workflow_error("workflow_recover", _message(e))
        body = workflow_result(store.get_run(run.id))
        body["resume_phase"] = plan.resume_phase
        ignored = [k for k, v in (("checkpoint_id", checkpoint_id), ("skip_phases", skip_phases)) if v]
        if ignored:
            body["warning"] = f"{', '.join(ignored)} not applied: the resume point comes from the run's log"
        return body

    def fractary_faber_workflow_cleanup(max_age_days: float = 30) -> dict[str, Any]:
        import datetime as dt
        import math

        from faber_runlog._services.archive import consolidate

        if not (isinstance(max_age_days, (int, float)) and math.isfinite(max_age_days) and 1 <= max_age_days <= 1e5):
            return workflow_error(
                "workflow_cleanup", f"max_age_days must be a number of days from 1, got {max_age_days!r}"
            )
        cutoff = _codec.iso(dt.datetime.now(dt.UTC) - dt.timedelta(days=max_age_days))
        consolidated: list[str] = []
        errors: list[str] = []
        try:
            runs = store.list_runs()
        except _REFUSED as e:
            return workflow_error("workflow_cleanup", _message(e))
        for r in runs:
            if r.status in ("completed", "failed", "cancelled") and (r.updated_at or r.created_at) < cutoff:
                try:
                    consolidate(store, r.run_id)
                    consolidated.append(r.run_id)
                except _REFUSED as e:
                    errors.append(f"{r.run_id}: {_message(e)}")
        # Nothing is deleted (the log is the only truth): finished runs are consolidated into events.jsonl.
        return {"status": "success", "deleted": 0, "consolidated": consolidated, "errors": errors}

    tools = {
        fractary_faber_workflow_status: "FABER compatible: a run's state, current phase and progress (workflow_id "
        "is the run id, or give work_id).",
        fractary_faber_workflow_pause: "FABER compatible: pause a running run (resume it later).",
        fractary_faber_workflow_resume: "FABER compatible: resume a paused run (or a failed one, at its resume point).",
        fractary_faber_workflow_recover: "FABER compatible: resume a failed run at the first phase its log has not "
        "completed.",
        fractary_faber_workflow_cleanup: "FABER compatible: consolidate finished runs older than max_age_days "
        "(nothing is deleted).",
        fractary_faber_event_emit: "FABER compatible: emit a workflow event to a run (FABER's argument names).",
        fractary_faber_run_get: "FABER compatible: a run's metadata and state in FABER's shapes.",
        fractary_faber_run_list: "FABER compatible: runs, newest first, filtered by work_id, status, org, project.",
        fractary_faber_event_consolidate: "FABER compatible: consolidate a finished run's events to events.jsonl "
        "(this also seals its log: nothing more can be appended).",
    }
    for fn, description in tools.items():
        server.add_tool(fn, description=description)

    def as_text(body: dict[str, Any]) -> str:
        if body.get("status") == "error":
            raise resource_error(str(body.get("error")))
        return _codec.dumps(body.get("payload", body)).decode()

    def runs_resource() -> str:
        return as_text(list_runs(None, None, None, None, _RESOURCE_LIMIT))

    def run_resource(run_id: str) -> str:
        return as_text(get_run(run_id, include_events=True))

    def events_resource(run_id: str) -> str:
        try:
            run = open_run(run_id)
            return as_text({"payload": [faber_event(e, run.id) for e in run.log.read()]})
        except _REFUSED as e:
            raise resource_error(_message(e)) from e

    # Concrete URIs are matched before templates, and templates in this order: events before the run itself.
    server.resource(
        "faber://runs",
        name="faber-runs",
        description="FABER compatible: the newest 100 runs.",
        mime_type="application/json",
    )(runs_resource)
    server.resource(
        "faber://runs/{+run_id}/events",
        name="faber-run-events",
        description="FABER compatible: every event of a run, in FABER's event shape.",
        mime_type="application/json",
    )(events_resource)
    server.resource(
        "faber://runs/{+run_id}",
        name="faber-run",
        description="FABER compatible: a run's metadata, state and event count.",
        mime_type="application/json",
    )(run_resource)
