"""Run state and the pure fold that rebuilds it from events.

``fold(state, event)`` returns a new :class:`RunState`; the store folds many
events into one private working copy (``apply``) so rebuilding a long run
costs one handler call per event, not one state copy per event. Each event
type has one small handler; types without one are counted and ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from faber_runlog._codec import ms_between
from faber_runlog._converter import converter, to_dict
from faber_runlog._events import Event
from faber_runlog._transitions import (
    ACTIVE_STATUSES,
    BACK,
    DECIDED,
    RUN_STATUSES,
    SAME,
    SEAL_TYPE,
    TERMINAL_STATUSES,
    TRANSITIONS,
    RunStatus,
)
from faber_runlog.errors import InvalidArgument

__all__ = [
    "ACTIVE_STATUSES",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "ApprovalState",
    "ArtifactRecord",
    "ErrorRecord",
    "PhaseState",
    "PullRequest",
    "RunState",
    "RunStatus",
    "StepState",
    "apply",
    "fold",
    "fold_all",
    "register_fold",
]



@attrs.define(slots=True)
class StepState:
    """One step of a phase: status, attempts and timing."""

    name: str
    phase: str
    status: str = "pending"
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    first_event_id: int = 0
    last_event_id: int = 0


@attrs.define(slots=True)
class PhaseState:
    """One phase: status, attempts, timing and its steps in the order they first ran."""

    name: str
    status: str = "pending"
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    steps: dict[str, StepState] = attrs.field(factory=dict)
    first_event_id: int = 0
    last_event_id: int = 0


@attrs.frozen(slots=True)
class ErrorRecord:
    """An error reported by an event, with where it happened."""

    event_id: int
    type: str
    timestamp: str
    message: str
    phase: str | None = None
    step: str | None = None


@attrs.frozen(slots=True)
class ArtifactRecord:
    """An artifact created or modified during the run."""

    event_id: int
    path: str
    action: str
    phase: str | None = None
    step: str | None = None
    kind: str | None = None


@attrs.define(slots=True)
class PullRequest:
    """A pull request opened (and maybe merged) by the run."""

    number: int
    event_id: int
    url: str | None = None
    title: str | None = None
    branch: str | None = None
    status: str = "open"
    merge_sha: str | None = None


@attrs.define(slots=True)
class ApprovalState:
    """One approval gate: who asked, for which phase, and the decision once made."""

    approval_id: str
    gate: str
    phase: str | None = None
    status: str = "pending"  # pending, approved, rejected, changes_requested, aborted, closed
    payload: dict[str, Any] = attrs.field(factory=dict)
    requested_at: str | None = None
    requested_event_id: int = 0
    action: str | None = None
    client_token: str | None = None
    comment: str | None = None
    decided_by: str | None = None
    resolved_at: str | None = None
    resolved_event_id: int | None = None


@attrs.define(slots=True)
class RunState:
    """Everything known about a run after folding its events up to ``last_event_id``."""

    run_id: str
    status: RunStatus = "created"
    current_phase: str | None = None
    current_step: str | None = None
    phases: dict[str, PhaseState] = attrs.field(factory=dict)
    errors: list[ErrorRecord] = attrs.field(factory=list)
    artifacts: list[ArtifactRecord] = attrs.field(factory=list)
    commits: list[dict[str, Any]] = attrs.field(factory=list)
    branches: list[dict[str, Any]] = attrs.field(factory=list)
    pull_requests: dict[str, PullRequest] = attrs.field(factory=dict)
    decisions: list[dict[str, Any]] = attrs.field(factory=list)
    tests: list[dict[str, Any]] = attrs.field(factory=list)
    specs: list[dict[str, Any]] = attrs.field(factory=list)
    checkpoints: list[dict[str, Any]] = attrs.field(factory=list)
    invocations: dict[str, int] = attrs.field(factory=dict)
    retry_loops: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    started_at: str | None = None
    ended_at: str | None = None
    updated_at: str | None = None
    last_event_id: int = 0
    event_counts: dict[str, int] = attrs.field(factory=dict)
    unknown_events: int = 0
    resume_count: int = 0
    rerun: dict[str, Any] | None = None
    idempotency_keys: dict[str, int] = attrs.field(factory=dict)
    paused_from: str | None = None
    status_reason: str | None = None
    approvals: dict[str, ApprovalState] = attrs.field(factory=dict)
    sealed_at: int | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the run has ended: completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_sealed(self) -> bool:
        """True once consolidation sealed the log (event ``sealed_at``): nothing can be appended."""
        return self.sealed_at is not None

    @property
    def is_resumable(self) -> bool:
        """True when a step or phase failed (``failing``) or the run failed: resume or retry can go on."""
        return self.status in ("failing", "failed") and self.sealed_at is None

    def step(self, phase: str, step: str) -> StepState | None:
        """The state of ``phase``/``step``, or None if it never appeared."""
        p = self.phases.get(phase)
        return None if p is None else p.steps.get(step)

    @property
    def failed_step(self) -> StepState | None:
        """The most recently failed step that has not since succeeded, if any."""
        found: StepState | None = None
        for p in self.phases.values():
            for s in p.steps.values():
                if s.status == "failed" and (found is None or s.last_event_id > found.last_event_id):
                    found = s
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``state.json`` body)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        """Rebuild from :meth:`to_dict` output."""
        return converter.structure(data, cls)

    def copy(self) -> RunState:
        """A deep copy that shares nothing mutable with this state."""
        return copy.deepcopy(self)


Handler = Callable[[RunState, Event], None]
_HANDLERS: dict[str, Handler] = {}


def register_fold(event_type: str, handler: Handler, *, replace: bool = False) -> None:
    """Fold events of ``event_type`` with ``handler(state, event)``, which mutates ``state`` (default registry).

    Handlers must be deterministic and depend only on the state and the event,
    so that every reader rebuilds the same state.
    """
    add_fold(_HANDLERS, event_type, handler, replace=replace)


def add_fold(table: dict[str, Handler], event_type: str, handler: Handler, *, replace: bool = False) -> None:
    """:func:`register_fold` into ``table`` (a registry's)."""
    if event_type in table and not replace:
        raise InvalidArgument(f"a fold handler for {event_type!r} is already registered; pass replace=True")
    table[event_type] = handler
    _GENERATION[0] += 1  # states folded before this are stale: logs refold on their next read


_GENERATION: list[int] = [0]


def fold_generation() -> int:
    """A counter bumped by every :func:`register_fold`: a cached state folded under an older one is stale."""
    return _GENERATION[0]


def _handles(*types: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in types:
            _HANDLERS[t] = fn
        return fn

    return deco


def apply(state: RunState, event: Event, handlers: Mapping[str, Handler] = _HANDLERS) -> None:
    """Fold ``event`` into ``state`` in place with ``handlers`` (a registry's folds; the fast path of :func:`fold`)."""
    etype = event.type
    state.last_event_id = event.event_id
    state.updated_at = event.timestamp
    counts = state.event_counts
    counts[etype] = counts.get(etype, 0) + 1
    if event.idempotency_key is not None:
        state.idempotency_keys.setdefault(event.idempotency_key, event.event_id)
    row = TRANSITIONS.get(etype)
    before = state.status
    target = SAME if row is None else row.target(before)
    if target == BACK:
        target = state.paused_from or "running"
    handler = handlers.get(etype)
    if handler is None:
        state.unknown_events += 1
    else:
        handler(state, event)
    if target not in (SAME, DECIDED):
        state.status = target  # type: ignore[assignment]  # the transition table holds only statuses
        if before in TERMINAL_STATUSES and target not in TERMINAL_STATUSES:
            # An ended run that runs again has no end time (yet).
            state.ended_at = None
            state.status_reason = None


def fold(state: RunState, event: Event) -> RunState:
    """Return the state after ``event``; ``state`` itself is left unchanged."""
    new = state.copy()
    apply(new, event)
    return new


def fold_all(state: RunState, events: Iterable[Event]) -> RunState:
    """Return the state after all ``events`` (one copy, then in-place folding)."""
    new = state.copy()
    for event in events:
        apply(new, event)
    return new


# -- helpers ---------------------------------------------------------------


def _phase(state: RunState, event: Event) -> PhaseState | None:
    name = event.phase
    if name is None:
        return None
    p = state.phases.get(name)
    if p is None:
        p = state.phases[name] = PhaseState(name=name, first_event_id=event.event_id)
    p.last_event_id = event.event_id
    return p


def _step(state: RunState, event: Event) -> StepState | None:
    p = _phase(state, event)
    if p is None or event.step is None:
        return None
    s = p.steps.get(event.step)
    if s is None:
        s = p.steps[event.step] = StepState(name=event.step, phase=p.name, first_event_id=event.event_id)
    s.last_event_id = event.event_id
    return s


def _record_error(state: RunState, event: Event) -> str:
    message = event.error_message or event.message or event.type
    state.errors.append(ErrorRecord(event.event_id, event.type, event.timestamp, message, event.phase, event.step))
    return message


def _finish(obj: PhaseState | StepState, event: Event, status: str) -> None:
    obj.status = status
    obj.ended_at = event.timestamp
    given = event.duration_ms
    obj.duration_ms = given if given is not None else ms_between(obj.started_at, event.timestamp)


def _close_pending(state: RunState, event: Event, status: str = "closed") -> None:
    # A run that ends leaves no gate open: its pending approvals are closed with it.
    for a in state.approvals.values():
        if a.status == "pending":
            a.status = status
            a.resolved_at = event.timestamp
            a.resolved_event_id = event.event_id


def _stop_active_work(state: RunState, event: Event, status: str, error: str | None) -> None:
    # Phases and steps still running (or waiting at a gate) end with the run.
    for p in state.phases.values():
        for s in p.steps.values():
            if s.status in ("running", "retrying"):
                _finish(s, event, status)
                s.error = error
                s.last_event_id = event.event_id
        if p.status in ("running", "awaiting_approval"):
            _finish(p, event, status)
            p.error = error
            p.last_event_id = event.event_id


def _end_run(state: RunState, event: Event, status: RunStatus) -> None:
    state.status = status
    state.ended_at = event.timestamp
    state.paused_from = None
    reason = event.metadata.get("reason")
    state.status_reason = reason if isinstance(reason, str) else None


# -- workflow --------------------------------------------------------------


@_handles("workflow_start")
def _workflow_start(state: RunState, event: Event) -> None:
    if state.started_at is None:
        state.started_at = event.timestamp
    state.ended_at = None


@_handles("workflow_complete")
def _workflow_complete(state: RunState, event: Event) -> None:
    _end_run(state, event, "completed")
    state.current_phase = state.current_step = None
    _close_pending(state, event)


@_handles("workflow_error")
def _workflow_error(state: RunState, event: Event) -> None:
    _end_run(state, event, "failed")
    message = _record_error(state, event)
    _stop_active_work(state, event, "failed", message)
    _close_pending(state, event)


@_handles("workflow_cancelled")
def _workflow_cancelled(state: RunState, event: Event) -> None:
    _end_run(state, event, "cancelled")
    _stop_active_work(state, event, "cancelled", None)
    _close_pending(state, event, "aborted")


@_handles("workflow_resumed")
def _workflow_resumed(state: RunState, event: Event) -> None:
    # The status comes from the transition table (a paused run goes back where it was).
    state.paused_from = None
    state.status_reason = None
    state.ended_at = None
    state.resume_count += 1


@_handles("workflow_paused")
def _workflow_paused(state: RunState, event: Event) -> None:
    if state.status != "paused":
        state.paused_from = state.status


# -- approvals ---------------------------------------------------------------

_DECIDED: Final = {
    "approve": "approved", "reject": "rejected", "request_changes": "changes_requested", "abort": "aborted",
}  # fmt: skip  # a table: one row per line


@_handles("approval_requested")
def _approval_requested(state: RunState, event: Event) -> None:
    m = event.metadata
    approval_id = str(m["approval_id"])
    payload = m.get("payload")
    state.approvals[approval_id] = ApprovalState(
        approval_id=approval_id,
        gate=str(m["gate"]),
        phase=event.phase,
        payload=dict(payload) if isinstance(payload, dict) else {},
        requested_at=event.timestamp,
        requested_event_id=event.event_id,
        decided_by=None,
    )
    p = _phase(state, event)
    if p is not None:
        p.status = "awaiting_approval"
    if state.status == "paused":
        state.paused_from = "awaiting_approval"


@_handles("approval_resolved")
def _approval_resolved(state: RunState, event: Event) -> None:
    m = event.metadata
    approval_id = str(m["approval_id"])
    action = str(m["action"])
    a = state.approvals.get(approval_id)
    if a is None:  # a decision on a gate this log never opened: keep it anyway
        a = state.approvals[approval_id] = ApprovalState(approval_id=approval_id, gate="", phase=event.phase)
    a.status = _DECIDED.get(action, action)
    a.action = action
    a.client_token = m.get("client_token")
    a.comment = m.get("comment")
    a.decided_by = event.user
    a.resolved_at = event.timestamp
    a.resolved_event_id = event.event_id
    p = state.phases.get(a.phase) if a.phase is not None else None
    if p is not None:
        p.last_event_id = event.event_id
    if action in ("approve", "request_changes"):
        if p is not None and action == "approve":
            _finish(p, event, "completed")
            if state.current_phase == p.name:
                state.current_phase = state.current_step = None
        elif p is not None:
            # Changes requested: the phase runs again from the start.
            p.status = "pending"
            p.started_at = p.ended_at = p.duration_ms = p.error = None
            state.current_phase, state.current_step = p.name, None
        if any(x.status == "pending" for x in state.approvals.values()):
            return  # other gates still wait
        if state.status == "awaiting_approval":
            state.status = "running"
        elif state.status == "paused" and state.paused_from == "awaiting_approval":
            state.paused_from = "running"
        return
    comment = a.comment or ""
    message = f"approval {approval_id} ({a.gate}) {'rejected' if action == 'reject' else 'aborted'}"
    message += f": {comment}" if comment else ""
    if p is not None and p.status not in ("completed", "skipped"):
        _finish(p, event, "failed" if action == "reject" else "cancelled")
        p.error = message
    if action == "reject":
        state.errors.append(ErrorRecord(event.event_id, event.type, event.timestamp, message, a.phase, None))
    _end_run(state, event, "failed" if action == "reject" else "cancelled")
    state.status_reason = f"approval_{action}"
    _stop_active_work(state, event, "cancelled", None)
    _close_pending(state, event, "aborted")


@_handles("workflow_rerun")
def _workflow_rerun(state: RunState, event: Event) -> None:
    state.rerun = dict(event.metadata)


# -- phases and steps --------------------------------------------------------


@_handles("phase_start")
def _phase_start(state: RunState, event: Event) -> None:
    p = _phase(state, event)
    assert p is not None  # schema requires phase
    p.status = "running"
    p.attempts += 1
    p.started_at = event.timestamp
    p.ended_at = p.duration_ms = p.error = None
    state.current_phase = p.name
    state.current_step = None


@_handles("phase_skip")
def _phase_skip(state: RunState, event: Event) -> None:
    p = _phase(state, event)
    assert p is not None
    p.status = "skipped"
    p.ended_at = event.timestamp


@_handles("phase_complete")
def _phase_complete(state: RunState, event: Event) -> None:
    p = _phase(state, event)
    assert p is not None
    _finish(p, event, "completed")
    if state.current_phase == p.name:
        state.current_phase = state.current_step = None


@_handles("phase_error")
def _phase_error(state: RunState, event: Event) -> None:
    p = _phase(state, event)
    assert p is not None
    _finish(p, event, "failed")
    p.error = _record_error(state, event)


@_handles("step_start")
def _step_start(state: RunState, event: Event) -> None:
    s = _step(state, event)
    assert s is not None
    p = state.phases[s.phase]
    if p.status in ("pending", "failed"):
        p.status = "running"
        if p.attempts == 0:
            p.attempts = 1
            p.started_at = event.timestamp
    s.status = "running"
    s.attempts += 1
    s.started_at = event.timestamp
    s.ended_at = s.duration_ms = s.error = None
    state.current_phase = s.phase
    state.current_step = s.name


@_handles("step_complete")
def _step_complete(state: RunState, event: Event) -> None:
    s = _step(state, event)
    assert s is not None
    _finish(s, event, "completed")
    if state.current_step == s.name:
        state.current_step = None


@_handles("step_error")
def _step_error(state: RunState, event: Event) -> None:
    s = _step(state, event)
    assert s is not None
    _finish(s, event, "failed")
    s.error = _record_error(state, event)
    p = state.phases[s.phase]
    p.status = "failed"
    p.error = s.error


@_handles("step_skip")
def _step_skip(state: RunState, event: Event) -> None:
    s = _step(state, event)
    assert s is not None
    s.status = "skipped"
    s.ended_at = event.timestamp
    s.error = None
    if state.current_step == s.name and state.current_phase == s.phase:
        state.current_step = None


@_handles("step_retry")
def _step_retry(state: RunState, event: Event) -> None:
    s = _step(state, event)
    assert s is not None
    s.status = "retrying"
    p = state.phases[s.phase]
    if p.status == "failed":
        p.status = "running"


# -- artifacts, git, the rest ---------------------------------------------------


@_handles("artifact_create", "artifact_modify")
def _artifact(state: RunState, event: Event) -> None:
    action = "create" if event.type == "artifact_create" else "modify"
    path = event.metadata.get("path")
    if isinstance(path, str):
        state.artifacts.append(
            ArtifactRecord(event.event_id, path, action, event.phase, event.step, event.metadata.get("kind"))
        )
    for item in event.artifacts or ():
        p = item if isinstance(item, str) else item.get("path")
        if isinstance(p, str) and p != path:
            state.artifacts.append(ArtifactRecord(event.event_id, p, action, event.phase, event.step))


@_handles("commit_create")
def _commit(state: RunState, event: Event) -> None:
    state.commits.append({"event_id": event.event_id, **event.metadata})


@_handles("branch_create")
def _branch(state: RunState, event: Event) -> None:
    state.branches.append({"event_id": event.event_id, **event.metadata})


@_handles("pr_create")
def _pr_create(state: RunState, event: Event) -> None:
    m = event.metadata
    number = int(m["number"])
    state.pull_requests[str(number)] = PullRequest(
        number, event.event_id, m.get("url"), m.get("title"), m.get("branch")
    )


@_handles("pr_merge")
def _pr_merge(state: RunState, event: Event) -> None:
    number = int(event.metadata["number"])
    pr = state.pull_requests.get(str(number))
    if pr is None:
        pr = state.pull_requests[str(number)] = PullRequest(number, event.event_id)
    pr.status = "merged"
    pr.merge_sha = event.metadata.get("sha")


@_handles("decision_point")
def _decision(state: RunState, event: Event) -> None:
    state.decisions.append({"event_id": event.event_id, "phase": event.phase, "step": event.step, **event.metadata})


@_handles("test_run")
def _test_run(state: RunState, event: Event) -> None:
    state.tests.append({"event_id": event.event_id, "phase": event.phase, "step": event.step, **event.metadata})


@_handles("spec_generate", "spec_validate", "docs_update")
def _spec(state: RunState, event: Event) -> None:
    state.specs.append({"event_id": event.event_id, "type": event.type, **event.metadata})


@_handles("checkpoint")
def _checkpoint(state: RunState, event: Event) -> None:
    state.checkpoints.append(
        {"event_id": event.event_id, "label": event.metadata.get("label"), "phase": event.phase, "step": event.step}
    )


@_handles("skill_invoke", "agent_invoke")
def _invoke(state: RunState, event: Event) -> None:
    key = ("skill:" + str(event.metadata.get("skill"))) if event.type == "skill_invoke" else (
        "agent:" + str(event.metadata.get("agent"))
    )
    state.invocations[key] = state.invocations.get(key, 0) + 1


@_handles("retry_loop_enter")
def _loop_enter(state: RunState, event: Event) -> None:
    loop = str(event.metadata.get("loop"))
    state.retry_loops[loop] = {"active": True, "entered_event_id": event.event_id, **event.metadata}


@_handles("retry_loop_exit")
def _loop_exit(state: RunState, event: Event) -> None:
    loop = str(event.metadata.get("loop"))
    entry = state.retry_loops.setdefault(loop, {"loop": loop})
    entry.update(event.metadata)
    entry["active"] = False
    entry["exited_event_id"] = event.event_id


@_handles(SEAL_TYPE)
def _sealed(state: RunState, event: Event) -> None:
    state.sealed_at = event.event_id


def default_folds() -> dict[str, Handler]:
    """The process-wide fold handlers (the default registry's; ``register_fold`` fills them)."""
    return _HANDLERS
