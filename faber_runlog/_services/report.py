"""The final report of a run: ``report.json`` (schema-validated) and ``report.md`` next to its events.

Written when a run ends (completed, failed or cancelled) and again by
:func:`recover_missing_reports` for ended runs that lack one. Both files are
replaced atomically, the Markdown first, so a present ``report.json`` means
both are there. If composing the full report fails, a minimal report that
says so is written instead, so a finished run always has one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

import fastjsonschema

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.ids import RunId
from faber_runlog._domain.metadata import RunMetadata
from faber_runlog._domain.state import TERMINAL_STATUSES, RunState
from faber_runlog._format.layout import RunLayout, decode_summary
from faber_runlog._format.schemas import LazyValidator, load_schema
from faber_runlog._log.eventlog import EventLog
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import CorruptState, InvalidArgument

__all__ = [
    "REPORT_VERSION",
    "compose_report",
    "duration_text",
    "read_report",
    "recover_missing_reports",
    "render_markdown",
    "report_schema",
    "validate_report",
    "write_report",
]

log = logging.getLogger("faber_runlog._services.report")

REPORT_VERSION: Final = 1
EVENT_TAIL: Final = 50
COMPOSE_FAILED: Final = "report_compose_failed"

_validator: Final = LazyValidator("report.schema.json")


def report_schema() -> dict[str, Any]:
    """The JSON Schema every ``report.json`` satisfies."""
    return load_schema("report.schema.json")


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the field when ``report`` does not match the report schema."""
    try:
        _validator(report)
    except fastjsonschema.JsonSchemaValueException as e:
        raise InvalidArgument(f"report of run {report.get('run_id')} is invalid: {e.message} ({e.name})") from e


def _keys(run_id: RunId) -> tuple[str, str]:
    layout = RunLayout(run_id)
    return layout.report_json, layout.report_md


def _read_metadata(storage: Storage, run_id: RunId) -> RunMetadata:
    key = RunLayout(run_id).metadata
    body = storage.read(key)
    if body is None:
        raise CorruptState(f"run {run_id} has no metadata.json", run_id=str(run_id), path=storage.path(key))
    return RunMetadata.from_dict(_codec.loads(body))


def compose_report(storage: Storage, elog: EventLog, state: RunState | None = None) -> dict[str, Any]:
    """The full report of the run (at ``state``, default its current state); not written."""
    rid = RunId.parse(elog.run_id)
    state = state if state is not None else elog.fold_state()
    meta = _read_metadata(storage, rid)
    last = state.last_event_id
    tail = list(elog.read(max(0, last - EVENT_TAIL), until=last))
    phases = [
        {
            "name": p.name,
            "status": p.status,
            "attempts": p.attempts,
            "started_at": p.started_at,
            "ended_at": p.ended_at,
            "duration_ms": p.duration_ms,
            "error": p.error,
            "steps": [
                {
                    "name": s.name,
                    "status": s.status,
                    "attempts": s.attempts,
                    "started_at": s.started_at,
                    "ended_at": s.ended_at,
                    "duration_ms": s.duration_ms,
                    "error": s.error,
                }
                for s in p.steps.values()
            ],
        }
        for p in state.phases.values()
    ]
    approvals = [
        {
            "approval_id": a.approval_id,
            "gate": a.gate,
            "phase": a.phase,
            "status": a.status,
            "action": a.action,
            "comment": a.comment,
            "decided_by": a.decided_by,
            "requested_at": a.requested_at,
            "resolved_at": a.resolved_at,
        }
        for a in state.approvals.values()
    ]
    started = state.started_at or meta.created_at
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "run_id": str(rid),
        "org": rid.org,
        "project": rid.project,
        "status": state.status,
        "status_reason": state.status_reason,
        "complete": True,
        "compose_error": None,
        "created_at": meta.created_at,
        "started_at": state.started_at,
        "ended_at": state.ended_at,
        "duration_ms": _codec.ms_between(started, state.ended_at or state.updated_at),
        "params": meta.params,
        "params_hash": meta.params_hash,
        "tags": meta.tags,
        "parent_run_id": meta.parent_run_id,
        "phases": phases,
        "approvals": approvals,
        # artifacts and errors below are the latest LATEST_KEPT; totals counts them all (the events hold them all).
        "totals": dict(state.totals),
        "artifacts": [
            {
                "path": a.path,
                "action": a.action,
                "phase": a.phase,
                "step": a.step,
                "kind": a.kind,
                "event_id": a.event_id,
            }
            for a in state.artifacts
        ],
        "errors": [
            {
                "event_id": e.event_id,
                "type": e.type,
                "timestamp": e.timestamp,
                "message": e.message,
                "phase": e.phase,
                "step": e.step,
            }
            for e in state.errors
        ],
        "unresolved": [a.approval_id for a in state.approvals.values() if a.status == "pending"],
        "event_counts": dict(state.event_counts),
        "last_event_id": last,
        "event_tail": [
            {
                "event_id": e.event_id,
                "type": e.type,
                "timestamp": e.timestamp,
                "phase": e.phase,
                "step": e.step,
                "message": e.message,
                "error": e.error_message,
            }
            for e in tail
        ],
        "generated_at": _codec.now_iso(storage.clock.now()),
    }
    plain: dict[str, Any] = _codec.loads(_codec.dumps(report))
    return plain


def _minimal(run_id: str, state: RunState | None, error: BaseException) -> dict[str, Any]:
    rid = RunId.parse(run_id)
    return {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "org": rid.org,
        "project": rid.project,
        "status": state.status if state is not None else "unknown",
        "status_reason": state.status_reason if state is not None else None,
        "complete": False,
        "compose_error": f"{type(error).__name__}: {error}"[:4000],
        "ended_at": state.ended_at if state is not None else None,
        "last_event_id": state.last_event_id if state is not None else 0,
        "unresolved": [COMPOSE_FAILED],
        "generated_at": _codec.now_iso(),
    }


def duration_text(ms: float | None) -> str:
    """A duration for people: ``850 ms``, ``12.5 s``, ``3.2 min``; ``-`` when unknown (reports, HTML views)."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def _cell(value: Any) -> str:
    return str(value if value is not None else "-").replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """A readable ``report.md``: status, timeline with durations, failures, approvals, artifacts."""
    status = report.get("status", "unknown")
    reason = report.get("status_reason")
    lines = [f"# Run {report.get('run_id')}", ""]
    lines.append(f"- **Status:** {status}" + (f" ({reason})" if reason else ""))
    if not report.get("complete", False):
        lines.append(f"- **Report incomplete:** composing the full report failed: {report.get('compose_error')}")
    for label, key in (("Created", "created_at"), ("Started", "started_at"), ("Ended", "ended_at")):
        if report.get(key):
            lines.append(f"- **{label}:** {report[key]}")
    if "duration_ms" in report:
        lines.append(f"- **Duration:** {duration_text(report.get('duration_ms'))}")
    if report.get("params_hash"):
        lines.append(f"- **Params hash:** `{report['params_hash']}`")
    lines.append(f"- **Events:** {report.get('last_event_id', 0)}")
    phases = report.get("phases") or []
    if phases:
        lines += ["", "## Timeline", "", "| Phase / step | Status | Attempts | Duration |", "|---|---|---|---|"]
        for p in phases:
            lines.append(
                f"| {_cell(p['name'])} | {p['status']} | {p['attempts']} | {duration_text(p.get('duration_ms'))} |"
            )
            for s in p.get("steps", []):
                lines.append(
                    f"| &nbsp;&nbsp;{_cell(s['name'])} | {s['status']} | {s['attempts']} | "
                    f"{duration_text(s.get('duration_ms'))} |"
                )
    errors = report.get("errors") or []
    if errors:
        lines += ["", "## Failures", ""]
        for e in errors:
            where = "/".join(x for x in (e.get("phase"), e.get("step")) if x) or "run"
            lines.append(f"- **{_cell(where)}** ({e['type']}, event {e['event_id']}): {_cell(e['message'])}")
    approvals = report.get("approvals") or []
    if approvals:
        lines += ["", "## Approvals", ""]
        for a in approvals:
            who = f" by {a['decided_by']}" if a.get("decided_by") else ""
            comment = f": {_cell(a['comment'])}" if a.get("comment") else ""
            phase = f", phase {a['phase']}" if a.get("phase") else ""
            lines.append(f"- `{a['approval_id']}` (gate {_cell(a['gate'])}{phase}): {a['status']}{who}{comment}")
    artifacts = report.get("artifacts") or []
    if artifacts:
        lines += ["", "## Artifacts", ""]
        lines += [f"- {a['action']} `{a['path']}` (event {a['event_id']})" for a in artifacts]
    unresolved = report.get("unresolved") or []
    if unresolved:
        lines += ["", "## Unresolved", ""] + [f"- {u}" for u in unresolved]
    return "\n".join(lines) + "\n"


def write_report(storage: Storage, elog: EventLog, state: RunState | None = None) -> dict[str, Any]:
    """Compose, validate and write ``report.json`` and ``report.md``; returns the report written.

    When composing or validating fails, a minimal report that says so is
    written instead; only a failing write itself raises.
    """
    rid = RunId.parse(elog.run_id)
    report: dict[str, Any]
    try:
        report = compose_report(storage, elog, state)
        validate_report(report)
    except Exception as e:  # noqa: BLE001  (folds and schemas are anyone's code: the run still gets a minimal report)
        log.warning("final report of run %s could not be composed, writing a minimal one: %s", rid, e)
        if state is None:
            try:
                state = elog.fold_state()
            except Exception:  # noqa: BLE001  (folds are anyone's code: the minimal report does without the state)
                state = None
        report = _minimal(str(rid), state, e)
        validate_report(report)
    json_key, md_key = _keys(rid)
    storage.replace(md_key, render_markdown(report).encode())
    storage.replace(json_key, _codec.dumps(report))
    return report


def read_report(storage: Storage, run_id: str | RunId) -> dict[str, Any] | None:
    """The run's ``report.json``, or None if it has none (or it is unreadable)."""
    return _codec.load_object(storage.read(_keys(RunId.parse(run_id))[0]))


def recover_missing_reports(
    storage: Storage,
    open_log: Callable[[RunId], EventLog],
    run_ids: Iterable[str],
) -> list[str]:
    """Write reports for ended runs among ``run_ids`` that lack one (or whose report shows another status).

    Runs that have a report matching their summary's status cost two small reads;
    the others are folded exactly, so a run whose writer died right after its
    last event is still found. Returns the ids of the runs written.
    """
    rids = [RunId.parse(r) for r in run_ids]
    keys = {rid: _keys(rid)[0] for rid in rids}
    reports = storage.read_many(keys.values())
    summaries = storage.read_many(RunLayout(rid).summary for rid in rids)
    written = RecoveredReports()
    for rid in rids:
        work = functools.partial(_recover_one, storage, open_log, rid, reports.get(keys[rid]), summaries)
        done = _validate.guarded(str(rid), work, written.problems)
        if done:
            written.append(str(rid))
    for run_id, why in written.problems:
        log.warning("recover_missing_reports skipped damaged run %s: %s", run_id, why)
    return written


class RecoveredReports(list[str]):
    """Ids of the runs whose reports were written, plus ``problems``: ``(run_id, error)`` of runs skipped."""

    problems: list[tuple[str, str]]

    def __init__(self) -> None:
        super().__init__()
        self.problems = []


def _recover_one(
    storage: Storage,
    open_log: Callable[[RunId], EventLog],
    rid: RunId,
    report_body: bytes | None,
    summaries: dict[str, bytes | None],
) -> bool:
    """Write ``rid``'s report if it ended and lacks one (or it shows another status); whether it was written."""
    report = _codec.load_object(report_body)
    try:
        summary_status = decode_summary(summaries.get(RunLayout(rid).summary) or b"").get("status")
    except ValueError:  # missing or damaged: fold below
        summary_status = None
    if report is not None and report.get("status") == summary_status:
        return False
    elog = open_log(rid)
    state = elog.fold_state()
    if state.status not in TERMINAL_STATUSES:
        return False
    if report is not None and report.get("status") == state.status:
        return False
    write_report(storage, elog, state)
    return True
